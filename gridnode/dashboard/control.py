"""``gridnode dashboard``: the node's side, a fresh one-time login link.

The CLI asks over the control channel (so only the node's owner gets a link); the node
answers with the link (``url``), the dashboard's address without a token (``base_url``)
and the config key that sets its listen address (``config_key``).  This module is light
(no web server): the node imports it at start whether or not the dashboard runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import attrs

from ..config import NodeConfig
from ..control import ControlError
from .access import LOGIN_TTL_S, Access

__all__ = ["CONFIG_KEY", "Dashboard", "dashboard_method"]

#: The config key of the dashboard's listen address (``gridnode.config_keys``).
CONFIG_KEY: Final = "dashboard_listen"


@attrs.define
class Dashboard:
    """A running dashboard: who may log in, and where it listens (``base_url`` is set
    once the server has bound its port)."""

    access: Access
    listen: str
    base_url: str = ""

    def login_link(self) -> dict[str, Any]:
        token = self.access.new_login()
        return {
            "url": f"{self.base_url}/login?token={token}",
            "base_url": self.base_url,
            "config_key": CONFIG_KEY,
            "listen": self.listen,
            "expires_in_s": LOGIN_TTL_S,
        }


class DashboardHost(Protocol):
    """What the control method reads of the node (``gridnode.node.Node`` has it)."""

    @property
    def config(self) -> NodeConfig: ...
    @property
    def dashboard(self) -> Dashboard | None: ...


def dashboard_method(
    node: DashboardHost,
) -> Callable[[dict[str, Any], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[Any]]:
    """The ``dashboard`` control method: a new login link, or an error naming the key
    when the dashboard is off."""

    async def dashboard(params: dict[str, Any], emit: Any) -> dict[str, Any]:
        running = node.dashboard
        if running is None or not running.base_url:
            raise ControlError(
                "dashboard_off",
                f"this node's dashboard is off ({CONFIG_KEY} is empty): set {CONFIG_KEY} "
                f'= "127.0.0.1:0" in {node.config.home}/gridnode.toml, or run the node '
                f"with --set {CONFIG_KEY}=127.0.0.1:0",
            )
        return running.login_link()

    return dashboard
