"""Running grids: real node processes on loopback (``harness``, ``gridsim``, the demo) and
in-process models at scale (``gossip_sim``, ``durability``)."""
