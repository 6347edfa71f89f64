"""The storage engine: segment files behind a FileSystem interface, used for the Raft log,
the local loglet and the log-server record store. See docs/design/storage-format.md."""
