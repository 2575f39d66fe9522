// A snapshot's tree, one directory at a time (from `ls`), with a restore link per file.
"use strict";

function link(snapshot, path) {
  return "/browse?snapshot=" + encodeURIComponent(snapshot) + "&path=" + encodeURIComponent(path);
}

async function show(snapshot, path) {
  document.getElementById("snapshot-name").textContent = snapshot.slice(0, 12);
  const crumbs = document.getElementById("crumbs");
  crumbs.replaceChildren(gridnode.el("a", { href: link(snapshot, "") }, "/"));
  let so_far = "";
  for (const part of path.split("/").filter(Boolean)) {
    so_far = so_far ? so_far + "/" + part : part;
    crumbs.append(" ", gridnode.el("a", { href: link(snapshot, so_far) }, part), " /");
  }
  const answer = await fetch("/api/ls?snapshot=" + encodeURIComponent(snapshot) + "&path=" + encodeURIComponent(path));
  if (!answer.ok) {
    const error = document.getElementById("browse-error");
    error.hidden = false;
    error.textContent = `cannot list ${path || "/"}: ${(await answer.json()).error || answer.status}`;
    return;
  }
  const data = await answer.json();
  const body = document.querySelector("#entry-table tbody");
  body.replaceChildren();
  for (const e of data.entries) {
    const name = e.type === "dir" ? gridnode.el("a", { href: link(snapshot, e.path) }, e.name + "/") : e.name;
    const action = e.type === "file"
      ? gridnode.el("a", {
          href: "/api/file?snapshot=" + encodeURIComponent(snapshot) + "&path=" + encodeURIComponent(e.path),
          download: e.name, "data-restore": e.path,
        }, "restore")
      : "";
    body.append(gridnode.el("tr", { "data-entry": e.path, "data-type": e.type },
      gridnode.el("td", {}, name),
      gridnode.el("td", {}, e.type),
      gridnode.el("td", { class: "num" }, e.type === "file" ? gridnode.bytes(e.size) : ""),
      gridnode.el("td", {}, e.mtime ? e.mtime.slice(0, 19).replace("T", " ") : ""),
      gridnode.el("td", {}, action),
    ));
  }
  const more = document.getElementById("entry-more");
  more.hidden = data.total <= data.entries.length;
  more.textContent = `${data.total - data.entries.length} more entries not listed (gridnode ls shows all)`;
  document.getElementById("entry-table").dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", async () => {
  const params = new URLSearchParams(location.search);
  const [mapAnswer] = await Promise.all([fetch("/api/map")]);
  if (mapAnswer.ok) gridnode.nodeLine((await mapAnswer.json()).node);
  await show(params.get("snapshot") || "latest", params.get("path") || "");
});
