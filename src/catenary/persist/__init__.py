"""Durable homes of the cores' state: Raft storage and the local metadata store."""
