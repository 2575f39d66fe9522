"""Blocking disk access, always called through ``trio.to_thread``: the catalog, the packet
directory (allocated storage) and the target-side holdings."""
