"""The bundled coastlines: Natural Earth's 1:110m land, from the npm package world-atlas.

Natural Earth's data is in the public domain; world-atlas (ISC licence, its text in
``static/LICENSE-world-atlas.txt``) redistributes it as TopoJSON.  The dashboard needs
only closed rings of longitude/latitude, so the TopoJSON is decoded here once, at build
time, into ``static/land-110m.json`` (``{"source": ..., "rings": [[[lon, lat], ...]]}``,
two decimals, about 60 KB) and the page draws it with no library.  To rebuild it::

    npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    python -m gridnode.dashboard.land package/land-110m.json \
        > gridnode/dashboard/static/land-110m.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["decode_land", "main"]

Ring = list[list[float]]


def _arcs(topology: dict[str, Any]) -> list[Ring]:
    """The topology's arcs as absolute coordinates (quantized and delta-encoded in it)."""
    transform = topology.get("transform")
    out: list[Ring] = []
    for arc in topology["arcs"]:
        points: Ring = []
        x = y = 0.0
        for position in arc:
            if transform is not None:
                x += position[0]
                y += position[1]
                sx, sy = transform["scale"]
                tx, ty = transform["translate"]
                points.append([x * sx + tx, y * sy + ty])
            else:
                points.append([float(position[0]), float(position[1])])
        out.append(points)
    return out


def _ring(indexes: Sequence[int], arcs: list[Ring]) -> Ring:
    """One ring from its arc indexes (``~i``, that is ``-i - 1``, is arc i reversed); each
    arc after the first repeats the previous one's last point, which is dropped."""
    ring: Ring = []
    for index in indexes:
        points = arcs[index] if index >= 0 else arcs[~index][::-1]
        ring.extend(points[1:] if ring else points)
    return ring


def decode_land(topology: dict[str, Any], name: str = "land") -> list[Ring]:
    """Every ring (outer and holes) of the named object's polygons, two decimals."""
    if topology.get("type") != "Topology":
        raise ValueError("not a TopoJSON topology")
    arcs = _arcs(topology)
    shapes = topology["objects"][name]
    geometries = shapes["geometries"] if shapes["type"] == "GeometryCollection" else [shapes]
    rings: list[Ring] = []
    for geometry in geometries:
        if geometry["type"] == "Polygon":
            polygons = [geometry["arcs"]]
        elif geometry["type"] == "MultiPolygon":
            polygons = geometry["arcs"]
        else:
            continue
        for polygon in polygons:
            for indexes in polygon:
                ring = [[round(x, 2), round(y, 2)] for x, y in _ring(indexes, arcs)]
                if len(ring) >= 4:
                    rings.append(ring)
    return rings


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m gridnode.dashboard.land LAND-110M.json > OUT.json")
    topology = json.loads(Path(args[0]).read_text())
    body = {
        "source": "Natural Earth 1:110m land (public domain), via world-atlas 2.0.2 (ISC)",
        "rings": decode_land(topology),
    }
    sys.stdout.write(json.dumps(body, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
