"""Intervals, fan-outs and timeouts of the SWIM protocol, validated once on construction."""

from __future__ import annotations

from typing import Any, Final

import attrs

__all__ = ["LOCATION_CHECKS", "GossipConfig"]

LOCATION_CHECKS: Final = ("enforce", "warn", "off")


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number, not {value!r}")


def _count(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, not {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


@attrs.frozen
class GossipConfig:
    """Intervals, fan-outs and timeouts; the defaults are memberlist's LAN profile."""

    probe_interval_s: float = attrs.field(default=1.0, validator=_positive)
    probe_timeout_s: float = attrs.field(default=0.5, validator=_positive)
    indirect_probes: int = attrs.field(
        default=3, validator=[attrs.validators.instance_of(int), _non_negative]
    )
    gossip_interval_s: float = attrs.field(default=0.2, validator=_positive)
    gossip_fanout: int = attrs.field(default=3, validator=_count)
    #: Retransmit limit = retransmit_mult * ceil(log10(N + 1)).
    retransmit_mult: int = attrs.field(default=4, validator=_count)
    #: Lifeguard: the suspicion timeout shrinks with independent confirmations from
    #: ``suspicion_max_timeout_mult`` times the minimum down to the minimum.
    suspicion_mult: int = attrs.field(default=4, validator=_count)
    suspicion_max_timeout_mult: int = attrs.field(default=6, validator=_count)
    #: Forget dead and left members after this.
    dead_reap_s: float = attrs.field(default=30.0, validator=_positive)
    #: Anti-entropy: a digest exchange with one random member (Rule 6).
    sync_interval_s: float = attrs.field(default=30.0, validator=_positive)
    location_check: str = attrs.field(
        default="enforce", validator=attrs.validators.in_(LOCATION_CHECKS)
    )
    fibre_km_per_ms_rtt: float = attrs.field(default=100.0, validator=_positive)
    #: Keep gossiping to the recently dead so a wrongly declared member hears it and
    #: refutes (memberlist's GossipToTheDeadTime).
    gossip_to_dead_s: float = attrs.field(default=30.0, validator=_non_negative)
    #: Lifeguard local health: probe interval and timeout scale up to this factor.
    awareness_max_multiplier: int = attrs.field(default=8, validator=_count)
    #: Updates piggybacked on one probe, ack or gossip message.
    max_piggyback: int = attrs.field(default=8, validator=_count)
    #: One page of a full state exchange.
    max_records_per_message: int = attrs.field(default=4096, validator=_count)
    #: Was: above this many members the sync interval grew like memberlist's push/pull.
    #: Unused since anti-entropy runs by digest (Rule 6); kept so callers still work.
    sync_scale_threshold: int = attrs.field(default=32, validator=_count)
    #: Rule 5b: above this many members content refreshes spread by anti-entropy only.
    refresh_relay_max_members: int = attrs.field(default=64, validator=_count)
    #: A member that knows nobody retries its seeds this often.
    rejoin_interval_s: float = attrs.field(default=5.0, validator=_positive)
    #: Round trips kept per member; the minimum of them is the "best recent" one.
    rtt_samples: int = attrs.field(default=8, validator=_count)
    #: Own record changes are disseminated at most this often (latest value wins).
    self_update_min_interval_s: float = attrs.field(default=1.0, validator=_non_negative)
    #: Rule 4a: fresh signature checks per message (and per tick for waiting updates);
    #: about 110 us each, so 128 keep one message under ~15 ms of CPU.
    max_verifications_per_message: int = attrs.field(default=128, validator=_count)
    #: Rule 4a: fresh signature checks one sender may cause: a burst (a join into a
    #: grid of 4,096) and a sustained rate (~3% of a core).
    peer_verify_burst: int = attrs.field(default=4096, validator=_count)
    peer_verify_per_s: float = attrs.field(default=256.0, validator=_positive)
    #: Rule 4a: the same over every sender together (~25% of a core).
    verify_burst: int = attrs.field(default=2048, validator=_count)
    verify_per_s: float = attrs.field(default=2048.0, validator=_positive)
    #: Rule 4a: updates waiting for a budget, in all and from one sender.
    max_pending_updates: int = attrs.field(default=8192, validator=_count)
    max_pending_per_peer: int = attrs.field(default=4096, validator=_count)
    #: Rule 6: one sender gets a full state answer at most this often.
    sync_answer_interval_s: float = attrs.field(default=5.0, validator=_non_negative)
    #: Rule 2b: false accusations within a window that get a reporter rate-limited,
    #: and how often a limited reporter's claims are still heard.
    accuser_strike_limit: int = attrs.field(default=3, validator=_count)
    accuser_strike_window_s: float = attrs.field(default=300.0, validator=_positive)
    accuser_cooldown_s: float = attrs.field(default=30.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.max_piggyback > 64:
            raise ValueError("max_piggyback must be at most 64 (the wire limit)")
        if self.max_records_per_message > 4096:
            raise ValueError("max_records_per_message must be at most 4096 (the wire limit)")
