// Map drawing shared by the grid map and the placement page: the bundled coastlines, an
// equirectangular projection fitted to what is shown, and great circles for distance bands.
"use strict";

const geo = {
  W: 960,
  H: 540,
  EARTH_KM: 6371.0088,
  land: null,

  svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  },

  async loadLand() {
    const answer = await fetch("/static/land-110m.json");
    geo.land = answer.ok ? await answer.json() : null;
  },

  // The point `km` away from (lat, lon) on bearing `deg` (great circle), as [lon, lat].
  destination(lat, lon, km, deg) {
    const r = Math.PI / 180, d = km / geo.EARTH_KM, b = deg * r, p1 = lat * r, l1 = lon * r;
    const p2 = Math.asin(Math.sin(p1) * Math.cos(d) + Math.cos(p1) * Math.sin(d) * Math.cos(b));
    const l2 = l1 + Math.atan2(Math.sin(b) * Math.sin(d) * Math.cos(p1), Math.cos(d) - Math.sin(p1) * Math.sin(p2));
    return [((l2 / r + 540) % 360) - 180, p2 / r];
  },

  circle(lat, lon, km) {
    const points = [];
    for (let deg = 0; deg <= 360; deg += 4) points.push(geo.destination(lat, lon, km, deg));
    return points;
  },

  // Rings of a band (min and max km) around a point; none for an open side.
  bandRings(lat, lon, band) {
    const rings = [];
    if (lat === null || lat === undefined || lon === null || lon === undefined || !band) return rings;
    for (const km of [band.min_km, band.max_km]) if (km) rings.push(geo.circle(lat, lon, km));
    return rings;
  },

  // An equirectangular projection true to scale at the view's middle latitude, fitted to
  // `points` ([lon, lat]) or to the whole world.
  projection(points, world) {
    let [x0, x1, y0, y1] = [-180, 180, -60, 85];
    if (!world && points.length) {
      const lons = points.map((p) => p[0]), lats = points.map((p) => p[1]);
      x0 = Math.min(...lons); x1 = Math.max(...lons); y0 = Math.min(...lats); y1 = Math.max(...lats);
      const padLon = Math.max(3, (x1 - x0) * 0.12), padLat = Math.max(2, (y1 - y0) * 0.12);
      x0 -= padLon; x1 += padLon; y0 = Math.max(-85, y0 - padLat); y1 = Math.min(85, y1 + padLat);
    }
    const k = world ? 1 : Math.cos(((y0 + y1) / 2) * Math.PI / 180);
    const scale = Math.min(geo.W / ((x1 - x0) * k), geo.H / (y1 - y0));
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    return ([lon, lat]) => [geo.W / 2 + (lon - cx) * k * scale, geo.H / 2 - (lat - cy) * scale];
  },

  pathOf(points, project, close) {
    let d = "";
    let prev = null;
    for (const p of points) {
      const [x, y] = project(p);
      // A jump across the antimeridian starts a new piece, not a line across the map.
      d += (prev === null || Math.abs(p[0] - prev[0]) > 180 ? "M" : "L") + x.toFixed(1) + " " + y.toFixed(1);
      prev = p;
    }
    return d + (close ? "Z" : "");
  },

  drawLand(group, project) {
    group.replaceChildren();
    if (!geo.land) return;
    let d = "";
    for (const ring of geo.land.rings) d += geo.pathOf(ring, project, true);
    group.append(geo.svg("path", { d }));
  },

  drawBand(group, rings, project) {
    group.replaceChildren();
    if (!rings.length) return;
    group.append(geo.svg("path", { class: "band-fill", d: rings.map((r) => geo.pathOf(r, project, true)).join("") }));
    for (const r of rings) group.append(geo.svg("path", { class: "band-ring", d: geo.pathOf(r, project, true) }));
  },

  bandText(band) {
    const open = (v) => v === null || v === undefined;
    if (open(band.min_km) && open(band.max_km)) return "any distance";
    const km = (v) => (open(v) ? "…" : `${Math.round(v)} km`);
    return `${km(band.min_km)} to ${km(band.max_km)}`;
  },
};
