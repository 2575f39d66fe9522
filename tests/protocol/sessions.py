"""Two sans-IO sessions wired back to back (h11's ConnectionPair idea)."""

from __future__ import annotations

from nacl.signing import SigningKey

from protocol import Event, Role, Session

GRID = b"test-grid-000001"


def make(
    role: Role, *, grid: bytes = GRID, key: SigningKey | None = None, seal_payloads: bool = False
) -> Session:
    return Session(
        role=role,
        grid_id=grid,
        signing_key=key or SigningKey.generate(),
        listen_address=f"127.0.0.1:{1 if role is Role.INITIATOR else 2}",
        seal_payloads=seal_payloads,
    )


def pump(src: Session, dst: Session) -> list[Event]:
    events: list[Event] = []
    for frame in src.data_to_send():
        events += dst.receive(frame)
    return events


def handshake(a: Session, b: Session) -> tuple[list[Event], list[Event]]:
    a.start()
    b.start()
    ev_b = pump(a, b)  # a's hello -> b (b answers auth)
    ev_a = pump(b, a)  # b's hello + auth -> a
    ev_b += pump(a, b)  # a's auth -> b
    return ev_a, ev_b


def pair(**kwargs: object) -> tuple[Session, Session]:
    a, b = make(Role.INITIATOR, **kwargs), make(Role.RESPONDER, **kwargs)  # type: ignore[arg-type]
    handshake(a, b)
    assert a.is_ready and b.is_ready
    return a, b
