"""The bundled coastlines: decoded correctly from TopoJSON, and the shipped file sane."""

from __future__ import annotations

import json
from importlib import resources

from gridnode.dashboard.land import decode_land


def test_decode_land_follows_quantized_delta_arcs_and_reversed_ones() -> None:
    topology = {
        "type": "Topology",
        "transform": {"scale": [0.5, 0.25], "translate": [-10.0, 40.0]},
        # Arc 0: (0,0) -> (4,0) -> (4,4); arc 1: (4,4) -> (0,4) -> (0,0), delta-encoded.
        "arcs": [[[0, 0], [4, 0], [0, 4]], [[4, 4], [-4, 0], [0, -4]]],
        "objects": {
            "land": {
                "type": "GeometryCollection",
                "geometries": [
                    {"type": "Polygon", "arcs": [[0, 1]]},
                    {"type": "MultiPolygon", "arcs": [[[~1, ~0]]]},
                    {"type": "Point", "coordinates": [0, 0]},
                ],
            }
        },
    }
    square, reversed_square = decode_land(topology)
    assert square == [[-10.0, 40.0], [-8.0, 40.0], [-8.0, 41.0], [-10.0, 41.0], [-10.0, 40.0]]
    assert reversed_square == square[::-1]


def test_the_bundled_land_is_closed_rings_of_longitude_and_latitude() -> None:
    folder = resources.files("gridnode.dashboard") / "static"
    land = json.loads((folder / "land-110m.json").read_text())
    assert "Natural Earth" in land["source"]
    rings = land["rings"]
    assert 100 <= len(rings) <= 200  # Natural Earth 1:110m land has 127 polygons
    points = [point for ring in rings for point in ring]
    assert all(-180 <= lon <= 180 and -90 <= lat <= 90 for lon, lat in points)
    assert all(ring[0] == ring[-1] for ring in rings)
    # Somewhere near Paris is land; the middle of the Atlantic is not a ring's corner.
    assert any(abs(lon - 2.35) < 8 and abs(lat - 48.86) < 4 for lon, lat in points)
    licence = (folder / "LICENSE-world-atlas.txt").read_text()
    assert "Permission to use, copy, modify" in licence and "public domain" in licence
