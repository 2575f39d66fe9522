"""gridnode: a peer-to-peer grid backup runtime on trio.

Data backed up on any node is cut into chunks, deduplicated, compressed, encrypted,
erasure-coded into packets and spread over other nodes in an order only the source can
compute; restore finds the packets by that order.  See docs/ARCHITECTURE.md for the map
from the patent's claim elements to the modules of this package.
"""

import os as _os

# numpy's BLAS would start one thread per core for the small matrix products of
# placement; on a 2-core node they fight the worker threads that hash, compress and
# encrypt (measured 2-20x slower placement under load).  Set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
