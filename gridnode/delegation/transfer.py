"""Delivering a capability: the grant first, then the map's parts the receiver lacks.

The owner granting or renewing, and a delegate handing on, deliver the same way: the
grant (``GrantRepair``) with the parts inline when they are small; otherwise the
receiver answers with the digests it lacks and each follows in a ``GrantRepairPart``,
sealed to the receiver as it is sent, so a sender holds one part in memory at a time.
A renewal after a small change sends the grant and the one or two parts that changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from protocol._messages import GrantRepair, GrantRepairPart, RepairGranted

from ..errors import RemoteError
from ..transport.link import UNSUPPORTED

#: Reads one part's body (plaintext) by digest: from the owner's build or the giver's disk.
PartLoader = Callable[[bytes], Awaitable[bytes]]


async def deliver(
    link: Any,
    *,
    owner: bytes,
    version: int,
    head: bytes,
    parts: Mapping[bytes, PartLoader],
    seal_for: Callable[[bytes], Awaitable[bytes]],
    applied_through: int = 0,
    timeout_s: float,
) -> RepairGranted:
    """Send ``head`` over ``link``, then every part the receiver says it lacks; returns
    the receiver's last answer (its ``missing`` is empty once the capability is held).

    ``parts`` maps each digest the grant lists to a loader of its body; ``seal_for``
    seals a body to the receiver (run off the event loop by the caller's choice).

    A receiver of protocol 2 reads neither map parts nor the grant that lists them: it
    is refused here, as it would refuse it ("unsupported"), before anything is sent."""
    speaks = getattr(link, "speaks", None)  # a test's stand-in link has no version
    if speaks is not None and not speaks(GrantRepairPart):
        raise RemoteError(
            UNSUPPORTED, "the receiver's protocol version predates repair maps in parts"
        )
    answer = await link.request(
        lambda rid: GrantRepair(request_id=rid, capability=head, applied_through=applied_through),
        timeout_s=timeout_s,
    )
    for _round in range(len(parts) + 1):
        if not isinstance(answer, RepairGranted):
            raise RemoteError("bad_answer", f"expected repair_granted, got {answer.KIND}")
        if not answer.missing:
            return answer
        wanted = answer.missing[0]
        loader = parts.get(wanted)
        if loader is None:
            raise RemoteError("bad_answer", "the receiver asked for a part the grant does not list")
        sealed = await seal_for(await loader(wanted))
        answer = await link.request(
            lambda rid, s=sealed: GrantRepairPart(
                request_id=rid, owner=owner, version=version, part=s
            ),
            timeout_s=timeout_s,
        )
        await trio.lowlevel.checkpoint()
    raise RemoteError("bad_answer", "the receiver kept asking for parts")
