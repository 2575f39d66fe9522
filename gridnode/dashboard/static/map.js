// The grid map: coastlines (bundled), members by state, trust and free storage, and
// this node's backup-proximity band as rings.  Redrawn on every `map` event.
"use strict";

let latest = null;
let world = false;

function draw() {
  const data = latest;
  if (!data) return;
  const node = data.node;
  gridnode.nodeLine(node);
  const located = data.members.filter((m) => m.lat !== null && m.lon !== null);
  const band = node.backup_proximity || {};
  const rings = geo.bandRings(node.lat, node.lon, band);
  const project = geo.projection([...located.map((m) => [m.lon, m.lat]), ...rings.flat()], world);
  geo.drawLand(document.getElementById("land"), project);
  geo.drawBand(document.getElementById("band"), rings, project);
  document.getElementById("band-line").textContent = rings.length
    ? `backup-proximity band ${geo.bandText(band)} around this node`
    : "no backup-proximity band configured (backup_proximity)";

  const maxFree = Math.max(1, ...data.members.map((m) => m.free_bytes || 0));
  const group = document.getElementById("members"), labels = document.getElementById("labels");
  group.replaceChildren(); labels.replaceChildren();
  // Dead and left members underneath, this node on top.
  const order = { left: 0, dead: 1, suspect: 2, alive: 3, self: 4 };
  for (const m of [...located].sort((a, b) => order[a.state] - order[b.state])) {
    const [x, y] = project([m.lon, m.lat]);
    const r = 4 + 10 * Math.sqrt((m.free_bytes || 0) / maxFree);
    const distrusted = !m.trusted || m.audit_distrusted;
    const dot = geo.svg("circle", {
      cx: x.toFixed(1), cy: y.toFixed(1), r: r.toFixed(1),
      class: `member state-${m.state}${distrusted ? " distrusted" : ""}`,
      "data-member": m.short_id, "data-state": m.state,
    });
    const title = geo.svg("title");
    title.textContent = `${m.short_id} ${m.city || ""}: ${m.state}, ${gridnode.bytes(m.free_bytes)} free` +
      (m.audit_distrusted ? ", distrusted by audits" : "") + (!m.trusted ? ", location not trusted" : "");
    dot.append(title);
    group.append(dot);
    const label = geo.svg("text", { x: (x + r + 3).toFixed(1), y: (y + 4).toFixed(1) });
    label.textContent = m.city || m.short_id;
    labels.append(label);
  }

  const body = document.querySelector("#member-table tbody");
  body.replaceChildren();
  for (const m of data.members) {
    const trust = [];
    if (m.audit_distrusted) trust.push("distrusted by audits");
    if (!m.trusted) trust.push("location not trusted");
    body.append(gridnode.el("tr", { "data-member": m.short_id, "data-state": m.state },
      gridnode.el("td", {}, gridnode.el("code", {}, m.short_id)),
      gridnode.el("td", {}, gridnode.el("span", { class: `badge state-${m.state}` }, m.state)),
      gridnode.el("td", {}, m.lat === null ? `${m.city || ""} (no location)` : (m.city || `${m.lat.toFixed(2)}, ${m.lon.toFixed(2)}`)),
      gridnode.el("td", { class: "num" }, m.distance_km === null ? "–" : Math.round(m.distance_km)),
      gridnode.el("td", { class: "num" }, gridnode.bytes(m.free_bytes)),
      gridnode.el("td", { class: "num" }, gridnode.bytes(m.allocated_bytes)),
      gridnode.el("td", trust.length ? { class: "bad" } : {}, trust.join(", ") || "trusted"),
    ));
  }
  document.getElementById("member-count").textContent =
    `${data.members.length} (${data.members.filter((m) => m.state === "alive").length} alive besides this node)`;
  document.getElementById("map").dataset.version = String(data.membership_version);
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("zoom-toggle").addEventListener("click", (e) => {
    world = !world;
    e.target.textContent = world ? "Fit to members" : "Whole world";
    draw();
  });
  const [, mapAnswer] = await Promise.all([geo.loadLand(), fetch("/api/map")]);
  if (mapAnswer.ok) { latest = await mapAnswer.json(); draw(); }
  gridnode.live({ map: (data) => { latest = data; draw(); } });
});
