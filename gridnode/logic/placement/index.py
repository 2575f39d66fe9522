"""The member view's indexes: per-member arrays built once per gossip view version.

Every member other than the source gets a row (sorted by node id, so the answer is
independent of the order the view lists members in) with its liveness, free space,
location, trust, backup-proximity verdict and label codes; the candidate pool is the
rows that pass every rule that does not depend on the chunk or the packet size
(Rule 2).  Rows and pool positions are what the sequence, the selection and the
diagnostics index into.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .arrays import BOOL, F64, I64
from .members import Member, Source
from .proximity import Points, backup_mask, unit_vectors
from .rules import PlacementRules

__all__ = ["MemberIndex"]

_INT64_MAX = 2**63 - 1


class MemberIndex:
    """Row-aligned arrays over the members (``others``) and over the candidate pool.

    Raises:
        ValueError: when one member appears twice in ``members``.
    """

    def __init__(self, source: Source, members: Sequence[Member], rules: PlacementRules) -> None:
        seen: set[bytes] = set()
        others: list[Member] = []
        for member in members:
            if member.node_id in seen:
                raise ValueError(f"member {member.node_id.hex()} appears twice in the view")
            seen.add(member.node_id)
            if member.node_id != source.node_id:
                others.append(member)
        # Sorting makes the result independent of the order the view lists members in.
        others.sort(key=lambda m: m.node_id)
        self.others = tuple(others)
        count = len(others)

        self.alive: BOOL = np.fromiter((m.alive for m in others), dtype=np.bool_, count=count)
        self.free: I64 = np.fromiter(
            (min(m.free_bytes, _INT64_MAX) for m in others), dtype=np.int64, count=count
        )
        lat: F64 = np.fromiter(
            (math.nan if m.lat is None else m.lat for m in others), dtype=np.float64, count=count
        )
        lon: F64 = np.fromiter(
            (math.nan if m.lon is None else m.lon for m in others), dtype=np.float64, count=count
        )
        self.located: BOOL = np.fromiter(
            (m.lat is not None and m.location_trusted for m in others),
            dtype=np.bool_,
            count=count,
        )
        self.source_located = source.lat is not None and source.lon is not None
        backup = rules.backup_proximity
        if backup.is_unbounded:
            self.in_backup: BOOL = np.ones(count, dtype=np.bool_)
        elif not self.source_located or count == 0:
            self.in_backup = np.zeros(count, dtype=np.bool_)
        else:
            assert source.lat is not None and source.lon is not None
            self.in_backup = backup_mask(backup, source.lat, source.lon, lat, lon)

        codes = np.full((count, len(rules.distinct)), -1, dtype=np.int64)
        for column, name in enumerate(rules.distinct):
            values: dict[str, int] = {}
            for row, member in enumerate(others):
                value = dict(member.labels).get(name)
                if value is not None:
                    codes[row, column] = values.setdefault(value, len(values))
        self.labelled: BOOL = np.all(codes >= 0, axis=1)
        # Every member's geometry and labels, not just the pool's: a target that
        # already holds a packet (``fixed``) may since have left the pool.
        self.all_points = Points(xyz=unit_vectors(lat, lon), lat=lat, lon=lon, codes=codes)
        self.all_index = {m.node_id: i for i, m in enumerate(others)}

        eligible = self.alive & self.labelled
        if rules.uses_distance:
            eligible &= self.located & self.in_backup
        pool = np.flatnonzero(eligible)
        self.pool_ids: tuple[bytes, ...] = tuple(others[i].node_id for i in pool)
        self.pool_index = {node_id: i for i, node_id in enumerate(self.pool_ids)}
        self.pool_free: I64 = self.free[pool]
        self.pool_min_free = int(self.pool_free.min()) if pool.size else 0
        self.pool_points = Points(
            xyz=np.ascontiguousarray(self.all_points.xyz[pool]),
            lat=lat[pool],
            lon=lon[pool],
            codes=codes[pool],
        )
        self.pool_codes: I64 = self.pool_points.codes
