"""The node's dashboard in the browser (issue 13): the grid map, the snapshots, a
snapshot's placement and a browser of its tree.

``access`` (login links and sessions), ``control`` (``gridnode dashboard``'s control
method), ``data`` (what the pages are shown, cut from the control methods' answers),
``files`` (the tree browser and its one-file restores), ``jobs`` (transfers in
progress), ``app`` (the ASGI application), ``server`` (hypercorn's trio worker inside
the node, imported only when the dashboard runs), ``land`` (the bundled coastlines'
converter), ``static/`` (hand-written pages, scripts and style, and the coastlines with
their licence).
"""

from __future__ import annotations

from .access import Access
from .control import CONFIG_KEY, Dashboard, dashboard_method
from .jobs import JobBoard

__all__ = ["CONFIG_KEY", "Access", "Dashboard", "JobBoard", "dashboard_method"]
