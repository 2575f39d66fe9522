// Shared by the dashboard's pages: formatting, the header line, the live-update stream.
"use strict";

const gridnode = {
  bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let i = 0;
    let v = n;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)) + " " + units[i];
  },
  // A duration as people read it: "45 s", "12 min", "2 h 05 min" (not "7500 s").
  duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    const m = Math.floor(s / 60);
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
  },
  time(seconds) {
    if (!seconds) return "–";
    return new Date(seconds * 1000).toLocaleString();
  },
  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
    }
    return node;
  },
  nodeLine(node) {
    const line = document.getElementById("node-line");
    if (!line || !node) return;
    const s = node.storage || {};
    line.textContent = `node ${node.short_id} · ${node.city || "no location"} · grid ${node.grid_name || "?"} · ` +
      `${gridnode.bytes(s.used_bytes)} held of ${gridnode.bytes(s.allocated_bytes)}`;
  },
  // Live updates by server-sent events; the browser reconnects by itself.
  live(handlers) {
    const badge = document.getElementById("live");
    const mark = (state, text) => { badge.dataset.live = state; badge.textContent = text; };
    const topics = ["snapshots", "jobs"].filter((t) => t in handlers).map((t) => t + "=1");
    const source = new EventSource("/api/events" + (topics.length ? "?" + topics.join("&") : ""));
    source.onopen = () => mark("live", "live");
    source.onerror = () => mark("lost", "reconnecting…");
    for (const [event, handler] of Object.entries(handlers)) {
      source.addEventListener(event, (e) => {
        handler(JSON.parse(e.data));
        mark("live", "live · " + new Date().toLocaleTimeString());
      });
    }
    return source;
  },
};

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.nav === page) a.classList.add("current");
  }
});
