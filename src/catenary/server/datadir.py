"""The node's data directory and its storage marker.

Theory of operation
-------------------
1. ``<data_dir>/catenary-node.json`` (the marker) names the cluster the data
   belongs to, the node id (0 until the node is provisioned or has joined),
   the generation, the metadata server kind and when the directory was
   created.  It is JSON followed by a CRC32C line, written to a temporary
   file, fsynced, renamed and the directory fsynced: it is either the old or
   the new version, never a mix; a corrupt marker stops the node with a
   message naming the file (it is never guessed around).
2. A node refuses a data directory of another cluster, or of the other
   metadata server kind (``local`` data is moved to ``replicated`` by a
   migration, never by reinterpreting the files).
3. Every start bumps the generation durably *before* the node announces
   itself, so two incarnations of a node never share a generation.
4. ``<data_dir>/LOCK`` is held (flock) while the node runs: two processes on
   one directory would corrupt it, so the second one is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

import crc32c
import msgspec

MARKER_NAME = "catenary-node.json"
LOCK_NAME = "LOCK"
MARKER_FORMAT = 1


class DataDirError(Exception):
    """The data directory cannot be used (other cluster, corrupt marker, locked)."""


class Marker(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    format: int = MARKER_FORMAT
    cluster_name: str
    node_id: int = 0
    generation: int = 0
    metadata_server: str = "replicated"
    founder: bool = False  # provisioned the cluster (started Raft with itself as only voter)
    created_ms: int = 0


def encode_marker(marker: Marker) -> bytes:
    body = msgspec.json.encode(marker)
    return body + b"\n" + f"crc32c={crc32c.crc32c(body):08x}\n".encode()


def decode_marker(data: bytes, path: str) -> Marker:
    body, sep, tail = data.rstrip(b"\n").rpartition(b"\n")
    if not sep or not tail.startswith(b"crc32c="):
        raise DataDirError(f"{path}: corrupt marker (no checksum line)")
    try:
        expected = int(tail[len(b"crc32c=") :], 16)
    except ValueError:
        raise DataDirError(f"{path}: corrupt marker (bad checksum line)") from None
    if crc32c.crc32c(body) != expected:
        raise DataDirError(f"{path}: corrupt marker (checksum mismatch)")
    try:
        marker = msgspec.json.decode(body, type=Marker)
    except msgspec.DecodeError as exc:
        raise DataDirError(f"{path}: corrupt marker ({exc})") from None
    if marker.format != MARKER_FORMAT:
        raise DataDirError(f"{path}: marker format {marker.format} is not supported")
    return marker


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DataDir:
    """An opened, locked data directory (see the module rules)."""

    def __init__(self, path: str, marker: Marker, lock_fd: int) -> None:
        self.path = path
        self.marker = marker
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, path: str, *, cluster_name: str, metadata_server: str) -> DataDir:
        path = os.path.abspath(path)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise DataDirError(f"data dir {path}: cannot create: {exc.strerror}") from None
        lock_path = os.path.join(path, LOCK_NAME)
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataDirError(
                f"data dir {path}: cannot open {LOCK_NAME}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise DataDirError(f"data dir {path} is in use by another catenary process") from None
        try:
            marker = cls._load_or_create(path, cluster_name, metadata_server)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path, marker, lock_fd)

    @staticmethod
    def _load_or_create(path: str, cluster_name: str, metadata_server: str) -> Marker:
        marker_path = os.path.join(path, MARKER_NAME)
        try:
            with open(marker_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            raise DataDirError(f"{marker_path}: cannot read: {exc.strerror}") from None
        if data is None:
            others = sorted(
                n for n in os.listdir(path) if n not in (LOCK_NAME, MARKER_NAME + ".tmp")
            )
            if others:
                # Files without a marker: not ours to overwrite or interpret.
                raise DataDirError(
                    f"data dir {path} is not empty but has no {MARKER_NAME} "
                    f"(found {', '.join(others[:5])}); refusing to use it"
                )
            marker = Marker(
                cluster_name=cluster_name,
                metadata_server=metadata_server,
                created_ms=int(time.time() * 1000),
            )
            _write_marker(path, marker)
            return marker
        marker = decode_marker(data, marker_path)
        if marker.cluster_name != cluster_name:
            raise DataDirError(
                f"data dir {path} belongs to cluster {marker.cluster_name!r}, "
                f"not {cluster_name!r}; refusing to start"
            )
        if marker.metadata_server != metadata_server:
            raise DataDirError(
                f"data dir {path} holds a {marker.metadata_server!r} metadata server, "
                f"but metadata.server = {metadata_server!r}; refusing to start"
            )
        return marker

    def update(self, **changes: object) -> Marker:
        """Durably replace fields of the marker (fsync before returning).

        The in-memory marker changes only once the new one is durable: after a
        failed write the node must not go on as what it did not persist (e.g. a
        retried provision running as node 1 with no node id on disk).
        """
        marker = msgspec.structs.replace(self.marker, **changes)
        _write_marker(self.path, marker)
        self.marker = marker
        return marker

    def bump_generation(self) -> int:
        return self.update(generation=self.marker.generation + 1).generation

    def subdir(self, name: str) -> str:
        path = os.path.join(self.path, name)
        os.makedirs(path, exist_ok=True)
        return path

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1


def _write_marker(path: str, marker: Marker) -> None:
    """Write the marker durably, or raise ``DataDirError`` leaving no temporary file."""
    final = os.path.join(path, MARKER_NAME)
    tmp = final + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            data = memoryview(encode_marker(marker))
            while data:  # a short write (a nearly full disk) must not leave a cut marker
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        full = " (disk full: free space and start again)" if exc.errno == errno.ENOSPC else ""
        raise DataDirError(
            f"data dir {path}: cannot write {MARKER_NAME}: {exc.strerror or exc}{full}"
        ) from None
