// The placement of one snapshot (the owner's own view): its holders on the map inside
// the snapshot's backup band, and each chunk's pairwise spread against its packet band.
"use strict";

function within(km, band) {
  if (km === null || km === undefined) return null;
  if (band.min_km !== null && band.min_km !== undefined && km < band.min_km) return false;
  if (band.max_km !== null && band.max_km !== undefined && km > band.max_km) return false;
  return true;
}

// The chunk whose pairs are drawn by default: the first with a pair breaking the packet
// rule, else the first with two holders placed, else the first.
function defaultChunk(chunks) {
  const bad = chunks.findIndex((c) => (c.pairs || []).some((p) => p.ok === false));
  if (bad >= 0) return bad;
  const placed = chunks.findIndex((c) => (c.pairs || []).some((p) => p.km !== null));
  return placed >= 0 ? placed : 0;
}

// Lines between every two holders of chunk ``index``: green when the pair meets the
// packet-proximity band, red when it does not (too close, or too far), grey when a
// holder's place is unknown; each labelled with its distance.
function drawPairs(data, index, project, packetBand) {
  const group = document.getElementById("pairs");
  group.replaceChildren();
  const chunk = data.chunks[index];
  const where = new Map(data.targets.filter((t) => t.lat !== null && t.lon !== null)
    .map((t) => [t.short_id, project([t.lon, t.lat])]));
  for (const row of document.querySelectorAll("#chunk-table tbody tr")) {
    row.dataset.selected = String(row.dataset.chunk === String(index));
  }
  const line = document.getElementById("pairwise-line");
  if (!chunk) { line.textContent = ""; return; }
  let bad = 0;
  for (const pair of chunk.pairs || []) {
    const a = where.get(pair.a), b = where.get(pair.b);
    if (!a || !b) continue;
    const state = pair.ok === null ? "unknown" : pair.ok ? "ok" : "bad";
    if (pair.ok === false) bad += 1;
    const why = pair.ok !== false ? "" : packetBand.min_km !== null && pair.km < packetBand.min_km ? " (too close)" : " (too far)";
    const el = geo.svg("line", {
      class: `pair-line pair-${state}`, x1: a[0].toFixed(1), y1: a[1].toFixed(1), x2: b[0].toFixed(1), y2: b[1].toFixed(1),
      "data-a": pair.a, "data-b": pair.b, "data-ok": String(pair.ok), "data-km": String(pair.km),
    });
    const title = geo.svg("title");
    title.textContent = `${pair.a} – ${pair.b}: ${pair.km} km${why}`;
    el.append(title);
    group.append(el);
    const label = geo.svg("text", { class: `pair-label pair-${state}`,
      x: ((a[0] + b[0]) / 2).toFixed(1), y: ((a[1] + b[1]) / 2 - 3).toFixed(1) });
    label.textContent = `${Math.round(pair.km)} km${why}`;
    group.append(label);
  }
  line.textContent = `Chunk ${index + 1} drawn (click a row to draw another): ` +
    `${(chunk.pairs || []).length} pairs of holders, ${bad} outside the packet-proximity band ${geo.bandText(packetBand)}.`;
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
  for (const row of chunks.querySelectorAll("tr")) {
    row.addEventListener("click", () => drawPairs(data, Number(row.dataset.chunk), project, packetBand));
  }
  drawPairs(data, defaultChunk(data.chunks), project, packetBand);
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
