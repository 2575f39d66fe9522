"""gridnode: a peer-to-peer grid backup runtime on trio.

Data backed up on any node is cut into chunks, deduplicated, compressed, encrypted,
erasure-coded into packets and spread over other nodes in an order only the source can
compute; restore finds the packets by that order.  See docs/ARCHITECTURE.md for the map
from the patent's claim elements to the modules of this package.
"""

__version__ = "0.1.0"
