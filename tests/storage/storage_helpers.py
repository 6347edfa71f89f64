"""Helpers shared by the storage tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass

from catenary.storage.fs import FileSystem


@dataclass
class FsCase:
    """A file system under test and a directory on it that exists."""

    fs: FileSystem
    root: str
    kind: str

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])


def record_offsets(raw: bytes) -> tuple[list[int], int]:
    """Offsets of the records of segment bytes ``raw`` and the end of the last one: records
    are read until the file ends or a record header is all zeros (a preallocated tail)."""
    at = 24  # SEGMENT_HEADER_BYTES
    offsets = []
    while at + 8 <= len(raw) and raw[at : at + 8] != bytes(8):
        offsets.append(at)
        at += 8 + int.from_bytes(raw[at : at + 4], "little")
    assert at <= len(raw)
    return offsets, at


def as_version_1(raw: bytes) -> bytes:
    """Segment bytes ``raw`` (written without preallocation) relabelled as format version 1,
    with the header CRC redone: what an older catenary wrote."""
    import crc32c

    head = raw[:4] + (1).to_bytes(2, "little") + raw[6:20]
    return head + crc32c.crc32c(head).to_bytes(4, "little") + raw[24:]
