"""Small checksummed files replaced atomically (hard state, snapshot metadata, markers).

Theory of operation
-------------------
``atomic_write(fs, path, data)``:

1. write header + data to ``path + ".tmp"`` (truncating any leftover), fsync it;
2. rename it over ``path`` (atomic);
3. fsync the parent directory - only now is the new content durable, and the caller may
   acknowledge whatever depends on it.

A crash at any step leaves either the old or the new complete file at ``path`` (a leftover
``.tmp`` is ignored and overwritten next time).

``read_checked(fs, path)`` returns the data, ``None`` when the file does not exist, and raises
:class:`CorruptionError` naming the file when the header, length or CRC32C does not match.

File layout (little-endian), format version 1::

    magic  b"CTAF"   4 bytes
    version u16      = 1
    reserved u16     = 0
    length u32       bytes of data that follow the header
    crc u32          CRC32C over the 12 header bytes above, then the data
    data             ``length`` bytes
"""

from __future__ import annotations

import posixpath
import struct

import crc32c

from catenary.storage.errors import CorruptionError
from catenary.storage.fs import FileSystem

MAGIC = b"CTAF"
VERSION = 1
_HEADER = struct.Struct("<4sHHII")
HEADER_BYTES = _HEADER.size
TMP_SUFFIX = ".tmp"


def encode_checked(data: bytes) -> bytes:
    """The on-disk form of ``data`` (header + data)."""
    head = struct.pack("<4sHHI", MAGIC, VERSION, 0, len(data))
    crc = crc32c.crc32c(data, crc32c.crc32c(head))
    return head + struct.pack("<I", crc) + data


def decode_checked(path: str, raw: bytes) -> bytes:
    """Validate ``raw`` (the whole file) and return its data; ``path`` names it in errors."""
    if len(raw) < HEADER_BYTES:
        raise CorruptionError(path, 0, f"file is {len(raw)} bytes, shorter than its header")
    magic, version, _reserved, length, crc = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise CorruptionError(path, 0, f"bad magic {magic!r}")
    if version != VERSION:
        raise CorruptionError(path, 4, f"unsupported format version {version}")
    if HEADER_BYTES + length != len(raw):
        raise CorruptionError(
            path, 8, f"header says {length} data bytes, file holds {len(raw) - HEADER_BYTES}"
        )
    data = raw[HEADER_BYTES:]
    if crc32c.crc32c(data, crc32c.crc32c(raw[:12])) != crc:
        raise CorruptionError(path, 12, "CRC32C mismatch")
    return data


def atomic_write(fs: FileSystem, path: str, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data``; durable on return unless ``durable=False``.

    ``durable=False`` skips both fsyncs: for files whose loss or corruption is harmless
    because readers validate them and fall back (e.g. index checkpoints).
    """
    tmp = path + TMP_SUFFIX
    f = fs.open(tmp, create=True)
    try:
        f.truncate(0)
        f.write(encode_checked(data))
        if durable:
            f.fsync()
    finally:
        f.close()
    fs.rename(tmp, path)
    if durable:
        fs.fsync_dir(posixpath.dirname(path) or ".")


def read_checked(fs: FileSystem, path: str) -> bytes | None:
    """The data of a file written by :func:`atomic_write`, or ``None`` if it does not exist."""
    if not fs.exists(path):
        return None
    f = fs.open(path, create=False)
    try:
        raw = f.pread(0, f.size())
    finally:
        f.close()
    return decode_checked(path, raw)
