// The placement of one snapshot (the owner's own view): its holders on the map inside
// the snapshot's backup band, and each chunk's pairwise spread against its packet band.
"use strict";

function within(km, band) {
  if (km === null || km === undefined) return null;
  if (band.min_km !== null && band.min_km !== undefined && km < band.min_km) return false;
  if (band.max_km !== null && band.max_km !== undefined && km > band.max_km) return false;
  return true;
}

function draw(data) {
  const rules = data.rules || {};
  const band = rules.backup_proximity || { min_km: null, max_km: null };
  const packetBand = rules.packet_proximity || { min_km: null, max_km: null };
  const src = data.source;
  document.getElementById("snapshot-name").textContent = data.snapshot_id;
  document.getElementById("rules-line").textContent =
    `backup-proximity band ${geo.bandText(band)} around ${src.city || "this node"}; ` +
    `packet-proximity (pairwise) band ${geo.bandText(packetBand)}` +
    ((rules.distinct || []).length ? `; distinct ${rules.distinct.join(", ")}` : "");
  const located = data.targets.filter((t) => t.lat !== null && t.lon !== null);
  const rings = geo.bandRings(src.lat, src.lon, band);
  const points = [...located.map((t) => [t.lon, t.lat]), ...rings.flat()];
  if (src.lat !== null) points.push([src.lon, src.lat]);
  const project = geo.projection(points, false);
  geo.drawLand(document.getElementById("land"), project);
  geo.drawBand(document.getElementById("band"), rings, project);
  const lines = document.getElementById("lines"), group = document.getElementById("members");
  const labels = document.getElementById("labels");
  lines.replaceChildren(); group.replaceChildren(); labels.replaceChildren();
  const most = Math.max(1, ...data.targets.map((t) => t.packets));
  const [sx, sy] = src.lat !== null ? project([src.lon, src.lat]) : [null, null];
  for (const t of located) {
    const [x, y] = project([t.lon, t.lat]);
    if (sx !== null) lines.append(geo.svg("line", { class: "placement-line", x1: sx, y1: sy, x2: x, y2: y }));
    const dot = geo.svg("circle", {
      cx: x.toFixed(1), cy: y.toFixed(1), r: (5 + 9 * Math.sqrt(t.packets / most)).toFixed(1),
      class: "member state-alive", "data-target": t.short_id,
    });
    const title = geo.svg("title");
    title.textContent = `${t.short_id} ${t.city || ""}: ${t.packets} packets, ${t.distance_km} km`;
    dot.append(title);
    group.append(dot);
    const label = geo.svg("text", { x: (x + 12).toFixed(1), y: (y + 4).toFixed(1) });
    label.textContent = `${t.city || t.short_id} · ${Math.round(t.distance_km)} km`;
    labels.append(label);
  }
  if (sx !== null) {
    group.append(geo.svg("circle", { cx: sx.toFixed(1), cy: sy.toFixed(1), r: 8, class: "member state-self", "data-source": "1" }));
  }
  const body = document.querySelector("#target-table tbody");
  body.replaceChildren();
  for (const t of data.targets) {
    const ok = within(t.distance_km, band);
    body.append(gridnode.el("tr", { "data-target": t.short_id, "data-in-band": String(ok) },
      gridnode.el("td", {}, gridnode.el("code", {}, t.short_id)),
      gridnode.el("td", {}, t.city || "–"),
      gridnode.el("td", { class: "num" }, t.distance_km === null ? "–" : Math.round(t.distance_km)),
      gridnode.el("td", { class: "num" }, t.packets),
      gridnode.el("td", ok === false ? { class: "bad" } : {}, ok === null ? "unknown" : ok ? "yes" : "NO"),
    ));
  }
  document.getElementById("target-count").textContent = String(data.targets.length);
  const chunks = document.querySelector("#chunk-table tbody");
  chunks.replaceChildren();
  data.chunks.forEach((c, i) => {
    const ok = c.pairwise_min_km === null ? null
      : within(c.pairwise_min_km, packetBand) !== false && within(c.pairwise_max_km, packetBand) !== false;
    chunks.append(gridnode.el("tr", { "data-chunk": String(i) },
      gridnode.el("td", {}, i + 1 + (c.kind === "record" ? " (record)" : "")),
      gridnode.el("td", {}, `${c.k}/${c.n}`),
      gridnode.el("td", {}, c.targets.join(", ")),
      gridnode.el("td", { class: "num" }, c.pairwise_min_km ?? "–"),
      gridnode.el("td", { class: "num" }, c.pairwise_max_km ?? "–"),
      gridnode.el("td", ok === false ? { class: "bad" } : {}, ok === null ? "–" : ok ? "held" : "NOT held"),
    ));
  });
  document.getElementById("chunk-count").textContent = data.chunks_total > data.chunks.length
    ? `(first ${data.chunks.length} of ${data.chunks_total})` : `(${data.chunks_total})`;
  document.getElementById("map").dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", async () => {
  const snapshot = new URLSearchParams(location.search).get("snapshot") || "latest";
  const [, mapAnswer, answer] = await Promise.all([
    geo.loadLand(), fetch("/api/map"), fetch("/api/placement?snapshot=" + encodeURIComponent(snapshot)),
  ]);
  if (mapAnswer.ok) gridnode.nodeLine((await mapAnswer.json()).node);
  if (answer.ok) {
    draw(await answer.json());
  } else {
    const error = document.getElementById("placement-error");
    error.hidden = false;
    error.textContent = `no placement for ${snapshot}: ${(await answer.json()).error || answer.status}`;
  }
});
