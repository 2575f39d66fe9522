// The signed backup log, newest first, with the chain's verification.
"use strict";

document.addEventListener("DOMContentLoaded", async () => {
  const [mapAnswer, answer] = await Promise.all([fetch("/api/map"), fetch("/api/log")]);
  if (mapAnswer.ok) gridnode.nodeLine((await mapAnswer.json()).node);
  if (!answer.ok) return;
  const data = await answer.json();
  const badge = document.getElementById("log-verified");
  badge.className = "badge " + (data.verified ? "healthy" : "at_risk");
  badge.dataset.verified = String(data.verified);
  badge.textContent = data.verified ? "verified" : "BROKEN";
  document.getElementById("log-detail").textContent = data.detail || "";
  document.getElementById("log-count").textContent =
    data.total > data.entries.length ? `(newest ${data.entries.length} of ${data.total})` : `(${data.total})`;
  const body = document.querySelector("#log-table tbody");
  body.replaceChildren();
  for (const e of data.entries) {
    body.append(gridnode.el("tr", { "data-seq": String(e.seq) },
      gridnode.el("td", { class: "num" }, e.seq),
      gridnode.el("td", {}, gridnode.time(e.at)),
      gridnode.el("td", {}, e.event),
      gridnode.el("td", {}, e.snapshot_id ? gridnode.el("code", {}, e.snapshot_id.slice(0, 12)) : ""),
      gridnode.el("td", { class: "wrap" }, e.detail ? JSON.stringify(e.detail) : ""),
    ));
  }
});
