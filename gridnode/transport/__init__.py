"""The only place where trio-websocket meets the sans-IO protocol."""

from .link import PeerLink as PeerLink
from .link import RequestHandler as RequestHandler
from .pool import Transport as Transport
from .pool import TransportSettings as TransportSettings
