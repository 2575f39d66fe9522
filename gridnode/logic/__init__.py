"""Pure, synchronous logic (no trio, no sockets): chunking, packing, placement, distance,
cities and the SWIM membership state machine.  Unit-tested without a network."""
