// Transfers in progress: each running job's latest progress (the events its CLI gets),
// live by server-sent events, and the jobs that finished lately.
"use strict";

function done(p) {
  if (!p) return [null, null];
  const total = p.bytes_total ?? null;
  const now = p.bytes_read ?? p.bytes ?? null;
  return [now, total];
}

function render(data) {
  const body = document.querySelector("#running-table tbody");
  body.replaceChildren();
  for (const job of data.running) {
    const p = job.progress || {};
    const [now, total] = done(job.progress);
    const bar = gridnode.el("progress", { max: String(total || 1), value: String(now || 0) });
    body.append(gridnode.el("tr", { "data-job": String(job.job), "data-method": job.method, "data-done": String(now ?? ""), "data-total": String(total ?? "") },
      gridnode.el("td", {}, `${job.method} #${job.job}`),
      gridnode.el("td", {}, p.phase || (job.progress ? "" : "starting")),
      gridnode.el("td", {}, bar),
      gridnode.el("td", { class: "num" }, `${gridnode.bytes(now)} of ${gridnode.bytes(total)}`),
      gridnode.el("td", { class: "num" }, p.files_total ? `${p.files ?? 0} / ${p.files_total}` : "–"),
      gridnode.el("td", { class: "num" }, p.rate_bps ? gridnode.bytes(p.rate_bps) + "/s" : "–"),
      gridnode.el("td", { class: "num" }, gridnode.duration(p.eta_s)),
    ));
  }
  document.getElementById("running-count").textContent = String(data.running.length);
  document.getElementById("none-running").hidden = data.running.length > 0;
  const recent = document.querySelector("#recent-table tbody");
  recent.replaceChildren();
  for (const job of data.recent) {
    const [now] = done(job.progress);
    recent.append(gridnode.el("tr", { "data-job": String(job.job), "data-outcome": job.outcome },
      gridnode.el("td", {}, `${job.method} #${job.job}`),
      gridnode.el("td", {}, gridnode.time(job.started)),
      gridnode.el("td", { class: "num" }, `${(job.ended - job.started).toFixed(1)} s`),
      gridnode.el("td", {}, gridnode.el("span", { class: "badge " + (job.outcome === "ok" ? "healthy" : "at_risk") }, job.outcome)),
      gridnode.el("td", { class: "num" }, gridnode.bytes(now)),
    ));
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  const [mapAnswer, jobsAnswer] = await Promise.all([fetch("/api/map"), fetch("/api/jobs")]);
  if (mapAnswer.ok) gridnode.nodeLine((await mapAnswer.json()).node);
  if (jobsAnswer.ok) render(await jobsAnswer.json());
  gridnode.live({ map: (data) => gridnode.nodeLine(data.node), jobs: render });
});
