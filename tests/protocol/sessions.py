"""Two sans-IO sessions wired back to back (h11's ConnectionPair idea)."""

from __future__ import annotations

from nacl.signing import SigningKey

from protocol import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Event, Role, Session

GRID = b"test-grid-000001"


def make(
    role: Role,
    *,
    grid: bytes = GRID,
    key: SigningKey | None = None,
    seal_payloads: bool = False,
    require_sealed: bool = False,
    min_version: int = MIN_PROTOCOL_VERSION,
    max_version: int = PROTOCOL_VERSION,
) -> Session:
    return Session(
        role=role,
        grid_id=grid,
        signing_key=key or SigningKey.generate(),
        listen_address=f"127.0.0.1:{1 if role is Role.INITIATOR else 2}",
        seal_payloads=seal_payloads,
        require_sealed=require_sealed,
        min_version=min_version,
        max_version=max_version,
    )


def pump(src: Session, dst: Session) -> list[Event]:
    events: list[Event] = []
    for frame in src.data_to_send():
        events += dst.receive(frame)
    return events


def pump_frames(frames: list[bytes], dst: Session) -> list[Event]:
    events: list[Event] = []
    for frame in frames:
        events += dst.receive(frame)
    return events


def handshake(a: Session, b: Session) -> tuple[list[Event], list[Event]]:
    a.start()
    b.start()
    ev_b = pump(a, b)  # a's offer -> b (keys agreed; b waits for a's hello)
    ev_a = pump(b, a)  # b's offer -> a (a answers with its sealed hello)
    ev_b += pump(a, b)  # a's hello -> b (b is ready and answers with its hello)
    ev_a += pump(b, a)  # b's hello -> a
    return ev_a, ev_b


def pair(**kwargs: object) -> tuple[Session, Session]:
    a, b = make(Role.INITIATOR, **kwargs), make(Role.RESPONDER, **kwargs)  # type: ignore[arg-type]
    handshake(a, b)
    assert a.is_ready and b.is_ready
    return a, b
