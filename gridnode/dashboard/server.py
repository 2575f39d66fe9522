"""The dashboard's HTTP server: hypercorn's trio worker, inside the node's process.

Why hypercorn: it is a maintained ASGI server (the same authors as Quart) that runs
natively on trio (``hypercorn.trio.serve``), so the app runs on the node's own trio loop
and reads the node's state where the node changes it, with no thread and no second event
loop; it does HTTP/1.1 and HTTP/2 with h11 and h2, which the project would otherwise have
to get right by hand (the metrics endpoint writes its few bytes of HTTP itself, but a
page with live updates needs keep-alive, streaming and flow control).  uvicorn runs only
on asyncio; hypercorn's ``serve`` reports its bound addresses through ``task_status``,
which is how a port 0 becomes a URL.

The server is started from the node's root nursery (``gridnode.node``) and is cancelled
with it.  Its log lines go to structlog (``_Log``); it keeps no access log.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Protocol

import trio
from hypercorn.config import Config
from hypercorn.logging import Logger
from hypercorn.trio import serve

from ..config_keys import parse_address
from ..log import get_logger
from ..storage.catalog import Catalog
from .access import Access
from .app import DashboardApp, DataSource
from .control import CONFIG_KEY, Dashboard
from .files import Submit, clear_restore_dir
from .jobs import JobBoard

if TYPE_CHECKING:
    from ..actors.request import RequestActor
    from ..config import NodeConfig
    from ..identity import NodeIdentity
    from ..job_services import Services

__all__ = ["DashboardNode", "is_loopback", "open_dashboard", "url_host"]

_log = get_logger(actor="dashboard")


class DashboardNode(Protocol):
    """What the dashboard reads of the node (``gridnode.node.Node`` has it)."""

    @property
    def config(self) -> NodeConfig: ...
    @property
    def identity(self) -> NodeIdentity: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def services(self) -> Services: ...
    @property
    def request(self) -> RequestActor: ...
    @property
    def jobs(self) -> JobBoard: ...


class _Log(Logger):
    """hypercorn's log lines as structlog events; no access log."""

    async def access(self, request: Any, response: Any, request_time: float) -> None:
        return

    async def critical(self, message: str, *args: Any, **kwargs: Any) -> None:
        _log.error("dashboard_server", message=message % args if args else message)

    async def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        _log.warning("dashboard_server", message=message % args if args else message)

    async def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        _log.warning("dashboard_server", message=message % args if args else message)

    async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        _log.debug("dashboard_server", message=message % args if args else message)

    async def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        return

    async def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        _log.warning("dashboard_server", message=message % args if args else message)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def url_host(host: str) -> str:
    """The host part of a URL to a server bound to ``host``: a wildcard bind is reached
    on loopback from the machine ``gridnode dashboard`` runs on."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def open_dashboard(
    node: DashboardNode,
    submit: Submit,
    *,
    task_status: trio.TaskStatus[Dashboard] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serves the dashboard on ``dashboard_listen`` until cancelled; reports the running
    ``Dashboard`` (its URL known) once the port is bound.  ``submit`` runs a control job
    as the CLI would (the tree browser's downloads are restore jobs)."""
    listen = node.config.dashboard_listen
    host, port = parse_address(listen, key=CONFIG_KEY)
    access = Access()
    source = DataSource(
        methods=node.request.methods,  # the very methods `gridnode status` calls
        catalog=node.catalog,
        run_db=node.services.db,
        backup_proximity=node.config.backup_proximity,
        submit=submit,
        jobs=node.jobs,
        restore_dir=await trio.to_thread.run_sync(clear_restore_dir, node.config.home),
    )
    app = DashboardApp(
        source=source, access=access, cookie_name=f"gridnode_{node.identity.short_id}"
    )
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None  # not stdlib logging's stderr: _Log sends its lines to structlog
    config.logger_class = _Log
    config.include_server_header = False
    config.graceful_timeout = 1.0
    dashboard = Dashboard(access=access, listen=listen)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve, app, config)
        bound_port = int(binds[0].rsplit(":", 1)[1])
        dashboard.base_url = f"http://{url_host(host)}:{bound_port}"
        if not is_loopback(host):
            _log.warning(
                "dashboard_beyond_loopback",
                address=listen,
                message="the dashboard is reachable from other machines over plain HTTP: "
                "it asks for a login, but the login cookie crosses the network unencrypted "
                "(prefer loopback and an SSH tunnel)",
            )
        _log.info("dashboard_serving", url=dashboard.base_url)
        task_status.started(dashboard)
