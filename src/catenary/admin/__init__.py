"""The HTTP admin API of a node."""
