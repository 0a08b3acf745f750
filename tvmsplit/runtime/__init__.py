"""Runtime of the split pipeline: wire format and workers."""
