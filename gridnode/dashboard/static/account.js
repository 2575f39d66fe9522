// The node's account with the grid authority: subscription, usage, statement, invoices.
"use strict";

function table(obj) {
  const body = gridnode.el("tbody");
  for (const [key, value] of Object.entries(obj || {})) {
    const shown = value !== null && typeof value === "object" ? JSON.stringify(value) : String(value ?? "–");
    const number = typeof value === "number" && key.endsWith("bytes") ? gridnode.bytes(value) : shown;
    body.append(gridnode.el("tr", { "data-key": key }, gridnode.el("th", {}, key), gridnode.el("td", { class: "wrap" }, number)));
  }
  return gridnode.el("table", { class: "kv" }, body);
}

async function load() {
  const note = document.getElementById("account-note");
  const parts = document.getElementById("account-parts");
  note.textContent = "asking the grid authority…";
  const answer = await fetch("/api/account");
  const data = await answer.json();
  parts.replaceChildren();
  if (!answer.ok) { note.textContent = `no account: ${data.error || answer.status}`; return; }
  if (data.open_grid) { note.textContent = data.message; parts.dataset.state = "open_grid"; return; }
  note.textContent = data.stale ? `the authority could not be reached (${data.authority_error}); this is the last account fetched` : "";
  for (const part of ["subscription", "usage", "statement"]) {
    if (data[part]) parts.append(gridnode.el("h3", {}, part), table(data[part]));
  }
  if ((data.flags || []).length) parts.append(gridnode.el("p", { class: "bad" }, "flags: " + data.flags.join(", ")));
  const invoices = data.invoices || [];
  document.getElementById("invoice-count").textContent = String(invoices.length);
  const keys = [...new Set(invoices.flatMap((i) => Object.keys(i)))];
  document.querySelector("#invoice-table thead").replaceChildren(gridnode.el("tr", {}, ...keys.map((k) => gridnode.el("th", {}, k))));
  const body = document.querySelector("#invoice-table tbody");
  body.replaceChildren(...invoices.map((i) => gridnode.el("tr", {}, ...keys.map((k) => gridnode.el("td", {}, typeof i[k] === "object" ? JSON.stringify(i[k]) : String(i[k] ?? ""))))));
  parts.dataset.state = "loaded";
}

document.addEventListener("DOMContentLoaded", async () => {
  const mapAnswer = await fetch("/api/map");
  if (mapAnswer.ok) gridnode.nodeLine((await mapAnswer.json()).node);
  document.getElementById("refresh").addEventListener("click", load);
  await load();
});
