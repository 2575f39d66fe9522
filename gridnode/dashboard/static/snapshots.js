// The snapshots page: this node's snapshots with size, files and health, kept live.
"use strict";

function band(rules) {
  const b = (rules || {}).backup_proximity || {};
  if (b.min_km === null && b.max_km === null) return "any distance";
  const km = (v) => (v === null || v === undefined ? "" : `${Math.round(v)} km`);
  return `${km(b.min_km)} – ${km(b.max_km)}`;
}

function health(h, complete) {
  if (!complete) return gridnode.el("span", { class: "badge unknown" }, "incomplete");
  if (!h) return gridnode.el("span", { class: "badge unknown", title: "too large to check here: gridnode verify" }, "not checked");
  if (h.level === "empty") return gridnode.el("span", { class: "badge empty" }, "no data chunks");
  const text = `${h.level.replace("_", " ")}: weakest ${h.weakest_present}/${h.n} (needs ${h.k})` +
    (h.holders_distrusted ? `, ${h.holders_distrusted} holder(s) distrusted` : "");
  return gridnode.el("span", { class: `badge ${h.level}`, "data-health": h.level }, text);
}

// "yes", "no (N chunks)" or "unknown (M)": the snapshot's placement rules against where
// the view has its holders now (a holder it cannot place is unknown, not broken).
function rulesHeld(h, complete) {
  if (!complete || !h || h.level === "empty") return gridnode.el("span", { class: "muted" }, "–");
  if (h.rules_held === true) return gridnode.el("span", { class: "badge healthy", "data-rules-held": "yes" }, "yes");
  if (h.rules_held === false) {
    return gridnode.el("span", { class: "badge at_risk", "data-rules-held": "no" },
      `no (${h.rules_broken_chunks} chunk${h.rules_broken_chunks === 1 ? "" : "s"})`);
  }
  return gridnode.el("span", { class: "badge unknown", "data-rules-held": "unknown",
    title: "a holder's location (or a label the rules name) is not in the gossip view" },
    `unknown (${h.rules_unknown_chunks})`);
}

function render(rows) {
  const body = document.querySelector("#snapshot-table tbody");
  body.replaceChildren();
  for (const s of rows) {
    body.append(gridnode.el("tr", { "data-snapshot": s.snapshot_id },
      gridnode.el("td", {}, gridnode.el("a", { href: "/placement?snapshot=" + encodeURIComponent(s.snapshot_id), title: "where its packets went" },
        gridnode.el("code", { title: s.snapshot_id }, s.snapshot_id.slice(0, 12)))),
      gridnode.el("td", {}, gridnode.time(s.finished || s.created)),
      gridnode.el("td", { class: "wrap" }, s.complete
        ? gridnode.el("a", { href: "/browse?snapshot=" + encodeURIComponent(s.snapshot_id), "data-browse": "1", title: "browse its tree" }, (s.roots || []).join(", "))
        : (s.roots || []).join(", ")),
      gridnode.el("td", { class: "num" }, s.files ?? "–"),
      gridnode.el("td", { class: "num", "data-bytes": s.bytes ?? "" }, gridnode.bytes(s.bytes)),
      gridnode.el("td", {}, s.redundancy || "–"),
      gridnode.el("td", {}, band(s.rules)),
      gridnode.el("td", {}, (s.tags || []).join(", ")),
      gridnode.el("td", { class: "wrap" }, health(s.health, s.complete)),
      gridnode.el("td", {}, rulesHeld(s.health, s.complete)),
    ));
  }
  document.getElementById("snapshot-count").textContent = `${rows.length}`;
  document.getElementById("snapshot-empty").hidden = rows.length > 0;
}

document.addEventListener("DOMContentLoaded", async () => {
  const [mapAnswer, snapAnswer] = await Promise.all([fetch("/api/map"), fetch("/api/snapshots")]);
  if (mapAnswer.ok) gridnode.nodeLine((await mapAnswer.json()).node);
  if (snapAnswer.ok) render(await snapAnswer.json());
  gridnode.live({ map: (data) => gridnode.nodeLine(data.node), snapshots: render });
});
