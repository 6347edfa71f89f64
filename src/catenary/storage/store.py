"""The segmented record store: append-only segment files, an in-memory index, checkpoints.

Theory of operation
-------------------
A store is a directory holding a contiguous run of records at integer *positions*
``[first_position, next_position)``. The byte format is specified (and versioned) in
``docs/design/storage-format.md``; in short:

* ``store.meta`` (an :mod:`~catenary.storage.atomic` file): the store *generation* and the
  *base position* where the store starts when it holds no segment file.
* ``<first position, 20 digits>.seg``: a segment file - a 24-byte header (magic, version,
  generation, first position, CRC) and then records ``length u32 | crc32c u32 | payload``,
  where the CRC32C covers the 4 length bytes and then the payload. Version 2 files are
  preallocated: written zeros ahead of the records, up to ``segment_bytes_max``, overwritten
  in place, so a steady-state fdatasync changes no file size; only zeros may follow the
  records.
  Version 1 files (no zero tail) are still read and appended to.
* ``<first position>.idx``: an optional index checkpoint for that segment (record offsets).

Rules (numbered so tests and comments can cite them):

1. ``append`` only encodes into memory; nothing is durable until ``sync`` returns. ``sync``
   writes each segment's pending bytes with one write and one fsync, oldest segment first, and
   fsyncs the directory after creating a segment file. A segment is therefore completely
   durable before the next one is created: only the *last* segment may have a torn tail.
2. Positions are contiguous: segment ``k+1`` starts where segment ``k`` ends. A gap or overlap
   found at open is corruption.
3. Open scans each segment only after its checkpoint. A record that is short, too long or fails
   its CRC at offset X ends the records; in a version 2 file that is the clean end when only
   zeros follow. Otherwise it is a *torn tail* only when it is in the last segment, below no
   checkpoint, and no valid record starts anywhere after X; the torn bytes are then cut (or, in
   a preallocated file, zeroed in place), fsynced, and reported. Anything else is
   :class:`CorruptionError` naming file and offset - never skipped.
   (Residual risk: a payload that itself embeds a validly framed record after a torn point
   makes open refuse the store rather than guess; it never returns wrong data.)
4. A checkpoint is only a hint: blocks of offsets appended without fsync, each with its own
   CRC, generation and first position, each continuing the previous one. Blocks are used up to
   the first that does not qualify (a torn tail); the result must cover no more than the file
   holds, and its last offset must hold a valid record ending exactly where the checkpoint
   says. Otherwise it is ignored (reported) and the segment is scanned. Before any truncation
   cuts bytes a checkpoint covers, the checkpoint is removed durably (directory fsync), so a
   stale checkpoint can never survive a crash.
5. ``truncate_prefix`` removes whole segment files, oldest first, and never the last segment;
   the first remaining file names the new first position. ``truncate_suffix`` removes later
   files newest first, then cuts the file that holds the position; both are durable on return.
6. ``reset`` durably bumps the generation in ``store.meta`` *before* removing the segment files;
   at open, segment files of an older generation are leftovers of an interrupted reset and are
   removed. A segment of a newer generation than ``store.meta`` is corruption.
7. After a failed fsync nothing unsynced can be trusted: the store refuses writes
   (:class:`StoreFailedError`) until reopened. A failed *write* (e.g. ENOSPC) is rolled back to
   the last durable state, so the caller can retry once space returns.

Threading: one owner thread performs every mutation (``append``, ``sync``, ``truncate_*``,
``reset``, ``close``); reads (``read``, ``read_range``) may run concurrently from other
threads. One lock guards the index and buffers; the writer does not hold it during ``write``
or ``fsync``, so readers and the fsync overlap. Reads see appended-but-unsynced records.
"""

from __future__ import annotations

import bisect
import posixpath
import re
import struct
import sys
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import add, itemgetter, sub

import crc32c

from catenary.storage.atomic import TMP_SUFFIX, atomic_write, read_checked
from catenary.storage.errors import (
    CorruptionError,
    PositionError,
    RecordTooLargeError,
    StoreClosedError,
    StoreFailedError,
)
from catenary.storage.fs import File, FileSystem

__all__ = [
    "CorruptionError",
    "PositionError",
    "RecordTooLargeError",
    "RecoveryReport",
    "SegmentedStore",
    "StoreConfig",
    "StoreFailedError",
]

# Segment format version written by this code. Version 2 segments may end in zeros (they are
# preallocated); version 1 segments (never preallocated) are still read, and appended to.
FORMAT_VERSION = 2
SEGMENT_VERSIONS = (1, 2)
CHECKPOINT_VERSION = 1
SEGMENT_MAGIC = b"CTSG"
SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"
META_NAME = "store.meta"
POSITION_DIGITS = 20

# magic, version, header bytes, generation, first position, CRC32C of the preceding 20 bytes.
_SEGMENT_HEADER = struct.Struct("<4sHHIQI")
SEGMENT_HEADER_BYTES = _SEGMENT_HEADER.size  # 24
_RECORD_HEADER = struct.Struct("<II")  # length, CRC32C(length bytes + payload)
RECORD_HEADER_BYTES = _RECORD_HEADER.size  # 8
_META = struct.Struct("<IQ")  # generation, base position
# Checkpoint block: magic, version, generation, first position, index of its first offset,
# offset count, covered bytes, CRC32C over the 40 bytes before it and then the offsets.
_CHECKPOINT_BLOCK = struct.Struct("<4sIIQQIQI")
CHECKPOINT_MAGIC = b"CTIX"
_NONZERO = re.compile(rb"[^\x00]")
_LEN_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Bounds of a :class:`SegmentedStore` (sizes in bytes)."""

    # Roll over to a new segment file once the current one would exceed this.
    segment_bytes_max: int = 64 * 1024 * 1024
    # Write the active segment's index checkpoint every this many new durable records.
    index_checkpoint_records: int = 65536
    # Largest payload accepted by append (and believed at open).
    record_bytes_max: int = 8 * 1024 * 1024
    # Read at most this many bytes at once while scanning at open.
    scan_chunk_bytes: int = 1024 * 1024
    # Create each segment file at its full size (segment_bytes_max) of written zeros, and
    # overwrite them in place: an fdatasync then changes no file size and needs no journal
    # commit. Off: files grow with each write (the segment format is the same).
    preallocate: bool = True
    # Preallocate in steps of this many bytes (up to segment_bytes_max) rather than the whole
    # segment at once: the sync that allocates writes this many zeros, not 64 MiB (which
    # stalled a fresh store's first write past a 300 ms request timeout on a loaded machine),
    # at the cost of one size change (one journal commit) per step instead of none.
    # None: the whole segment at creation.
    preallocate_step_bytes: int | None = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.segment_bytes_max < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES:
            raise ValueError("segment_bytes_max is smaller than a header and a record header")
        if not 0 <= self.record_bytes_max <= _LEN_MAX:
            raise ValueError("record_bytes_max must be within [0, 2**32 - 1]")
        if self.index_checkpoint_records < 1:
            raise ValueError("index_checkpoint_records must be >= 1")
        if self.scan_chunk_bytes < 4096:
            raise ValueError("scan_chunk_bytes must be >= 4096")
        if self.preallocate_step_bytes is not None and self.preallocate_step_bytes < 4096:
            raise ValueError("preallocate_step_bytes must be >= 4096 (or None)")


@dataclass(slots=True)
class RecoveryReport:
    """What ``SegmentedStore.open`` found and did."""

    segments: int = 0
    records: int = 0
    records_scanned: int = 0
    checkpoints_used: int = 0
    checkpoints_rejected: list[str] = field(default_factory=list)
    torn_tail: bool = False
    torn_path: str | None = None
    torn_offset: int | None = None
    torn_bytes_dropped: int = 0
    removed_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{self.segments} segment(s), {self.records} record(s), "
            f"{self.records_scanned} scanned, {self.checkpoints_used} checkpoint(s) used"
        )
        if self.torn_tail:
            text += (
                f"; torn tail cut in {self.torn_path} at offset {self.torn_offset} "
                f"({self.torn_bytes_dropped} bytes dropped)"
            )
        if self.checkpoints_rejected:
            text += f"; checkpoints rejected: {'; '.join(self.checkpoints_rejected)}"
        if self.removed_files:
            text += f"; removed {', '.join(self.removed_files)}"
        return text


class _Segment:
    """One segment file and its in-memory index."""

    __slots__ = (
        "allocated",
        "checkpoint_bytes",
        "checkpoint_file_bytes",
        "checkpoint_records",
        "file",
        "file_bytes",
        "first",
        "index_path",
        "offsets",
        "path",
        "pending",
        "size",
        "synced_bytes",
        "version",
    )

    def __init__(self, directory: str, first: int) -> None:
        stem = posixpath.join(directory, f"{first:0{POSITION_DIGITS}d}")
        self.first = first
        self.path = stem + SEGMENT_SUFFIX
        self.index_path = stem + INDEX_SUFFIX
        self.offsets = array("Q")  # byte offset of each record, so lookups never scan
        self.size = 0  # logical size: bytes in the file plus pending bytes
        self.file_bytes = 0  # bytes written to the file
        self.synced_bytes = 0  # bytes known durable
        self.pending = bytearray()  # bytes [file_bytes, size), not yet written
        self.allocated = 0  # the file's size (records plus, in version 2, a zero tail)
        self.version = FORMAT_VERSION
        self.file: File | None = None
        self.checkpoint_records = 0  # records covered by the last checkpoint written or read
        self.checkpoint_bytes = 0
        self.checkpoint_file_bytes = 0  # valid length of the checkpoint file

    @property
    def next(self) -> int:
        return self.first + len(self.offsets)


class _HeadCrcs(dict[int, int]):
    """CRC32C of the 4 length bytes, by length: each record's CRC continues from it, and most
    logs repeat a few lengths. Bounded, so odd lengths cannot grow it without limit."""

    limit = 4096

    def __missing__(self, n: int) -> int:
        value: int = crc32c.crc32c(n.to_bytes(4, "little"))
        if len(self) < self.limit:
            self[n] = value
        return value


_HEAD_CRCS = _HeadCrcs()


def _segment_header(generation: int, first: int) -> bytes:
    head = struct.pack(
        "<4sHHIQ", SEGMENT_MAGIC, FORMAT_VERSION, SEGMENT_HEADER_BYTES, generation, first
    )
    return head + struct.pack("<I", crc32c.crc32c(head))


def _record_ok(view: memoryview | bytes, at: int, limit: int, record_bytes_max: int) -> int:
    """Length of the valid record at ``view[at:]`` (within ``limit``), or -1."""
    if at + RECORD_HEADER_BYTES > limit:
        return -1
    n: int
    crc: int
    n, crc = _RECORD_HEADER.unpack_from(view, at)
    if n > record_bytes_max or at + RECORD_HEADER_BYTES + n > limit:
        return -1
    body = view[at + RECORD_HEADER_BYTES : at + RECORD_HEADER_BYTES + n]
    if crc32c.crc32c(body, crc32c.crc32c(view[at : at + 4])) != crc:
        return -1
    return n


class SegmentedStore:
    """A durable, contiguous, append-only sequence of records (see the module docstring)."""

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        config: StoreConfig,
        generation: int,
        base_position: int,
    ) -> None:
        # Use :meth:`open`; the constructor only sets fields.
        self._fs = fs
        self._dir = directory
        self._config = config
        self._generation = generation
        self._empty_at = base_position  # first == next == this while there is no segment
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []
        self._next = base_position
        self._durable_next = base_position
        self._lock = threading.Lock()
        self._failed: BaseException | None = None
        self._closed = False
        self.recovery = RecoveryReport()

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        fs: FileSystem,
        directory: str,
        config: StoreConfig | None = None,
        *,
        first_position: int = 1,
    ) -> SegmentedStore:
        """Open (creating if needed) the store in ``directory`` and recover it (rules 2-4, 6)."""
        if first_position < 0:
            raise ValueError("first_position must be >= 0")
        config = config or StoreConfig()
        fs.mkdir(directory)
        meta_path = posixpath.join(directory, META_NAME)
        names = fs.listdir(directory)
        segment_names = [n for n in names if n.endswith(SEGMENT_SUFFIX)]
        raw = read_checked(fs, meta_path)
        if raw is None:
            if segment_names:
                raise CorruptionError(meta_path, None, "missing, but segment files exist")
            atomic_write(fs, meta_path, _META.pack(0, first_position))
            parent = posixpath.dirname(posixpath.normpath(directory))
            if parent and parent != directory:
                fs.fsync_dir(parent)  # make the new directory's own entry durable
            generation, base = 0, first_position
        else:
            if len(raw) != _META.size:
                raise CorruptionError(meta_path, None, f"{len(raw)} data bytes, expected 12")
            generation, base = _META.unpack(raw)
        store = cls(fs, directory, config, generation, base)
        store._recover(names)
        return store

    def _recover(self, names: list[str]) -> None:
        fs, report = self._fs, self.recovery
        removed_any = False

        def remove(path: str) -> None:
            nonlocal removed_any
            fs.remove(path)
            report.removed_files.append(posixpath.basename(path))
            removed_any = True

        firsts: list[int] = []
        index_firsts: set[int] = set()
        for name in names:
            path = posixpath.join(self._dir, name)
            if name.endswith(TMP_SUFFIX):
                remove(path)  # an interrupted atomic_write: the real file is intact
            elif name.endswith((SEGMENT_SUFFIX, INDEX_SUFFIX)):
                stem = name[: -len(SEGMENT_SUFFIX)]
                if len(stem) != POSITION_DIGITS or not stem.isdigit():
                    raise CorruptionError(path, None, "file name is not a 20-digit position")
                if name.endswith(SEGMENT_SUFFIX):
                    firsts.append(int(stem))
                else:
                    index_firsts.add(int(stem))
        firsts.sort()

        # Pass 1: headers. Drop leftovers of an interrupted reset (rule 6).
        live: list[tuple[_Segment, File, int, bool]] = []  # segment, file, size, header ok
        for first in firsts:
            seg = _Segment(self._dir, first)
            f = fs.open(seg.path, create=False)
            size = f.size()
            head = f.pread(0, SEGMENT_HEADER_BYTES)
            problem = self._check_header(head, first)
            if problem is None:
                seg.version = _SEGMENT_HEADER.unpack(head)[1]
                gen = _SEGMENT_HEADER.unpack(head)[3]
                if gen < self._generation:
                    f.close()
                    remove(seg.path)
                    if first in index_firsts:
                        remove(seg.index_path)
                        index_firsts.discard(first)
                    continue
                if gen > self._generation:
                    f.close()
                    raise CorruptionError(
                        seg.path,
                        8,
                        f"generation {gen} is newer than the store's {self._generation}",
                    )
            live.append((seg, f, size, problem is None))
        # A bad header is a torn creation only in the last file, with nothing valid after it.
        for i, (seg, f, size, header_ok) in enumerate(live):
            if header_ok:
                continue
            head = f.pread(0, SEGMENT_HEADER_BYTES)
            problem = self._check_header(head, seg.first) or "bad header"
            last = i == len(live) - 1
            if not last or self._valid_record_after(f, 1, size) is not None:
                for _, other, _, _ in live:
                    other.close()
                raise CorruptionError(seg.path, 0, problem)
            f.close()
            remove(seg.path)
            report.torn_tail = True
            report.torn_path = seg.path
            report.torn_offset = 0
            report.torn_bytes_dropped = size
            live.pop()
            break

        # Pass 2: index each segment from its checkpoint, scan the rest (rules 3, 4).
        try:
            for i, (seg, f, size, _) in enumerate(live):
                seg.file = f
                last = i == len(live) - 1
                self._index_segment(seg, f, size, last, seg.first in index_firsts)
                if self._segments and self._segments[-1].next != seg.first:
                    raise CorruptionError(
                        seg.path,
                        None,
                        f"starts at position {seg.first} but the previous segment ends at "
                        f"{self._segments[-1].next}",
                    )
                self._segments.append(seg)
                self._firsts.append(seg.first)
        except BaseException:
            for _, f, _, _ in live:
                f.close()
            raise
        for first in sorted(index_firsts - set(self._firsts)):
            remove(posixpath.join(self._dir, f"{first:0{POSITION_DIGITS}d}{INDEX_SUFFIX}"))
        if removed_any:
            fs.fsync_dir(self._dir)

        if self._segments:
            if self._segments[0].first < self._empty_at:
                raise CorruptionError(
                    self._segments[0].path,
                    None,
                    f"starts below the store's base position {self._empty_at}",
                )
            self._next = self._segments[-1].next
        else:
            self._next = self._empty_at
        self._durable_next = self._next
        report.segments = len(self._segments)
        report.records = self._next - self.first_position
        # Sealed segments that had to be scanned get a checkpoint now, for the next open.
        for seg in self._segments[:-1]:
            if seg.checkpoint_records < len(seg.offsets):
                self._write_checkpoint(seg)

    def _check_header(self, head: bytes, first: int) -> str | None:
        if len(head) < SEGMENT_HEADER_BYTES:
            return f"header is {len(head)} bytes, expected {SEGMENT_HEADER_BYTES}"
        magic, version, header_bytes, _gen, head_first, crc = _SEGMENT_HEADER.unpack(head)
        if crc32c.crc32c(head[:20]) != crc:
            return "header CRC32C mismatch"
        if magic != SEGMENT_MAGIC:
            return f"bad magic {magic!r}"
        if version not in SEGMENT_VERSIONS or header_bytes != SEGMENT_HEADER_BYTES:
            return f"unsupported format version {version}"
        if head_first != first:
            return f"header says first position {head_first}, file name says {first}"
        return None

    def _index_segment(
        self, seg: _Segment, f: File, size: int, last: bool, has_checkpoint: bool
    ) -> None:
        report = self.recovery
        start = SEGMENT_HEADER_BYTES
        durable_hint = 0  # bytes a checkpoint block says were durable when it was written
        if has_checkpoint:
            reason, durable_hint = self._load_checkpoint(seg, f, size)
            if reason is None:
                report.checkpoints_used += 1
                start = seg.checkpoint_bytes
            else:
                report.checkpoints_rejected.append(
                    f"{posixpath.basename(seg.index_path)}: {reason}"
                )
                seg.offsets = array("Q")
                seg.checkpoint_records = seg.checkpoint_bytes = seg.checkpoint_file_bytes = 0
        end, bad = self._scan(seg, f, start, size)
        dirty = size  # end of the bytes after the records that are not zeros
        if bad is not None and seg.version >= 2:
            # Version 2: the records end at the first invalid record header; only zeros may
            # follow (the preallocated tail). Anything else there is a torn write or damage.
            dirty = self._dirty_end(f, end, size)
            if dirty == end:
                bad = None
        if bad is not None:
            if not last:
                raise CorruptionError(seg.path, end, bad + " in a segment that is not the last")
            if end < durable_hint:
                # Checkpoints only cover synced bytes and are removed durably before any cut,
                # so this record was durable: bit-rot, not a torn write.
                raise CorruptionError(
                    seg.path,
                    end,
                    f"{bad} below byte {durable_hint}, which a checkpoint says was durable",
                )
            # A valid record starts before ``dirty`` but may end after it: its payload
            # may end in zero bytes.
            reach = min(size, dirty + RECORD_HEADER_BYTES + self._config.record_bytes_max)
            found = self._valid_record_after(f, end + 1, dirty, reach)
            if found is not None:
                raise CorruptionError(
                    seg.path, end, f"{bad}, followed by a valid record at offset {found}"
                )
            if seg.checkpoint_bytes > end:  # cannot happen: the checkpoint was validated
                raise CorruptionError(seg.index_path, None, "covers bytes that are torn")
            if seg.version >= 2 and self._config.preallocate:
                # Zero the torn bytes in place: the file keeps its preallocated size. A crash
                # while zeroing leaves zeros and the rest of the same garbage: torn again.
                self._zero(f, end, dirty)
            else:
                f.truncate(end)
                size = end
            f.fsync()
            report.torn_tail = True
            report.torn_path = seg.path
            report.torn_offset = end
            report.torn_bytes_dropped = dirty - end
        seg.size = seg.file_bytes = seg.synced_bytes = end
        seg.allocated = size

    def _dirty_end(self, f: File, start: int, end: int) -> int:
        """One past the last byte in ``[start, end)`` that is not zero, or ``start``."""
        chunk = self._config.scan_chunk_bytes
        dirty = start
        at = start
        while at < end:
            data = f.pread(at, min(chunk, end - at))
            if not data:
                break
            n = len(data.rstrip(b"\x00"))
            if n:
                dirty = at + n
            at += len(data)
        return dirty

    def _zero(self, f: File, start: int, end: int) -> None:
        """Overwrite ``[start, end)`` of ``f`` with zeros, a bounded buffer at a time."""
        if start >= end:
            return
        zeros = bytes(min(self._config.scan_chunk_bytes, end - start))
        at = start
        while at < end:
            n = min(len(zeros), end - at)
            f.pwrite(at, memoryview(zeros)[:n])
            at += n

    def _load_checkpoint(self, seg: _Segment, f: File, size: int) -> tuple[str | None, int]:
        """Load ``seg``'s checkpoint blocks (rule 4). Returns why they were rejected (None if
        used) and the bytes the well-formed blocks cover (which were durable once)."""
        handle = self._fs.open(seg.index_path, create=False)
        try:
            raw = handle.pread(0, handle.size())
        finally:
            handle.close()
        offsets = array("Q")
        covered = SEGMENT_HEADER_BYTES
        at = 0
        # Take blocks while they are whole, checksummed, ours and continue one another; a
        # torn or stray tail ends the usable part (it is cut before the next block is added).
        while at + _CHECKPOINT_BLOCK.size <= len(raw):
            magic, version, generation, first, start, count, block_covered, crc = (
                _CHECKPOINT_BLOCK.unpack_from(raw, at)
            )
            stop = at + _CHECKPOINT_BLOCK.size + 8 * count
            if (
                magic != CHECKPOINT_MAGIC
                or version != CHECKPOINT_VERSION
                or generation != self._generation
                or first != seg.first
                or start != len(offsets)
                or count == 0
                or stop > len(raw)
                or block_covered <= covered
            ):
                break
            body = raw[at + _CHECKPOINT_BLOCK.size : stop]
            if crc32c.crc32c(body, crc32c.crc32c(raw[at : at + 40])) != crc:
                break
            block = array("Q")
            block.frombytes(body)
            if sys.byteorder != "little":
                block.byteswap()
            if block[0] != covered or block[-1] >= block_covered:
                break  # records are contiguous: a block starts where the last one ended
            offsets.extend(block)
            covered = block_covered
            at = stop
        if not offsets:
            return ("no valid block" if raw else "empty"), 0
        if offsets[0] != SEGMENT_HEADER_BYTES:
            return "first offset is not right after the header", 0
        if covered > size:
            return f"covers {covered} bytes but the segment holds {size}", 0
        last = offsets[-1]
        raw_rec = f.pread(last, covered - last)
        n = _record_ok(raw_rec, 0, len(raw_rec), self._config.record_bytes_max)
        if n < 0 or RECORD_HEADER_BYTES + n != len(raw_rec):
            # The blocks are well formed, so these bytes were durable: the scan that follows
            # treats a bad record below ``covered`` as corruption, never as a torn tail.
            return f"last record at offset {last} does not match the segment", covered
        seg.offsets = offsets
        seg.checkpoint_records = len(offsets)
        seg.checkpoint_bytes = covered
        seg.checkpoint_file_bytes = at
        return None, covered

    def _scan(self, seg: _Segment, f: File, start: int, end: int) -> tuple[int, str | None]:
        """Index records from ``start``; returns (end of the last valid record, problem)."""
        rmax = self._config.record_bytes_max
        chunk = self._config.scan_chunk_bytes
        offsets = seg.offsets
        buf = memoryview(b"")
        buf_at = start
        at = start
        crc = crc32c.crc32c
        head_crcs = _HEAD_CRCS
        unpack = _RECORD_HEADER.unpack_from
        scanned = 0
        problem: str | None = None
        while at < end:
            if at + RECORD_HEADER_BYTES > end:
                problem = f"truncated record header ({end - at} bytes)"
                break
            rel = at - buf_at
            if rel + RECORD_HEADER_BYTES > len(buf):
                buf = memoryview(f.pread(at, min(chunk, end - at)))
                buf_at, rel = at, 0
            n, expect = unpack(buf, rel)
            if n > rmax:
                problem = f"record length {n} exceeds record_bytes_max {rmax}"
                break
            stop = at + RECORD_HEADER_BYTES + n
            if stop > end:
                problem = f"record of {n} bytes extends past the end of the file"
                break
            if stop - buf_at > len(buf):
                buf = memoryview(f.pread(at, max(chunk, stop - at)))
                buf_at, rel = at, 0
            if crc(buf[rel + 8 : rel + 8 + n], head_crcs[n]) != expect:
                problem = "record CRC32C mismatch"
                break
            offsets.append(at)
            scanned += 1
            at = stop
        self.recovery.records_scanned += scanned
        return at, problem

    def _valid_record_after(
        self, f: File, start: int, end: int, reach: int | None = None
    ) -> int | None:
        """Offset of the first valid record starting in ``[start, end)`` and ending by
        ``reach`` (default ``end``), if any. ``end`` may be the last non-zero byte: a
        record's payload can end in zeros, so ``reach`` must go past it."""
        if start >= end:
            return None
        data = f.pread(start, max(end, reach or end) - start)
        limit = len(data)
        rmax = self._config.record_bytes_max
        i = 0
        while i + RECORD_HEADER_BYTES <= limit:
            # A record header is never 8 zero bytes (its CRC would be wrong), so skip zero runs.
            m = _NONZERO.search(data, i)
            if m is None:
                return None
            if m.start() - i >= RECORD_HEADER_BYTES:
                i = m.start() - RECORD_HEADER_BYTES + 1
                continue
            if _record_ok(data, i, limit, rmax) >= 0:
                return start + i
            i += 1
        return None

    # -- properties ---------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def config(self) -> StoreConfig:
        return self._config

    @property
    def first_position(self) -> int:
        with self._lock:
            return self._first()

    def _first(self) -> int:
        return self._segments[0].first if self._segments else self._empty_at

    @property
    def next_position(self) -> int:
        return self._next

    @property
    def durable_next_position(self) -> int:
        """Every record below this position is durable."""
        return self._durable_next

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    # -- writing ------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """Refuse every further write until the store is reopened (first failure wins)."""
        with self._lock:
            if self._failed is None:
                self._failed = exc

    def _check_writable(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store {self._dir} is closed")
        if self._failed is not None:
            raise StoreFailedError(
                f"store {self._dir} failed earlier ({self._failed!r}); reopen it"
            ) from self._failed

    def append(self, payloads: Sequence[bytes]) -> int:
        """Buffer ``payloads`` as the next records; returns the position of the first.

        Not durable until :meth:`sync`. All or nothing: a payload over ``record_bytes_max``
        raises :class:`RecordTooLargeError` before anything is buffered.
        """
        self._check_writable()
        count = len(payloads)
        if count == 0:
            return self._next
        # Per-record work runs in C iterators (map/join/accumulate): a batch of small
        # records costs little more Python time than one record.
        lengths = list(map(len, payloads))
        rmax = self._config.record_bytes_max
        if max(lengths) > rmax:
            raise RecordTooLargeError(
                f"record of {max(lengths)} bytes exceeds record_bytes_max {rmax}"
            )
        crcs = map(crc32c.crc32c, payloads, map(_HEAD_CRCS.__getitem__, lengths))
        # Interleave headers and payloads by slice assignment (cheaper than zip + chain).
        parts: list[bytes] = [b""] * (2 * count)
        parts[0::2] = map(_RECORD_HEADER.pack, lengths, crcs)
        parts[1::2] = payloads
        encoded = b"".join(parts)
        total = len(encoded)
        with self._lock:
            first = self._next
            seg = self._segments[-1] if self._segments else self._new_segment(first)
            if seg.size + total <= self._config.segment_bytes_max or (
                count == 1 and not seg.offsets
            ):
                # Fast path: the whole batch fits in the current segment.
                size = seg.size
                seg.pending += encoded
                if lengths.count(lengths[0]) == count:  # equal lengths: offsets are a range
                    seg.offsets.extend(range(size, size + total, total // count))
                else:
                    steps = map(add, lengths, repeat(RECORD_HEADER_BYTES, count - 1))
                    seg.offsets.extend(accumulate(steps, initial=size))
                seg.size = size + total
            else:
                self._append_rolling(seg, first, lengths, encoded)
            self._next = first + count
        return first

    def _append_rolling(
        self, seg: _Segment, position: int, lengths: list[int], encoded: bytes
    ) -> None:
        """Slow path of append: place records one by one, rolling over segments."""
        segmax = self._config.segment_bytes_max
        view = memoryview(encoded)
        at = 0
        for n in lengths:
            record = RECORD_HEADER_BYTES + n
            if seg.size + record > segmax and seg.offsets:
                seg = self._new_segment(position)
            seg.pending += view[at : at + record]
            seg.offsets.append(seg.size)
            seg.size += record
            at += record
            position += 1

    def _new_segment(self, first: int) -> _Segment:
        seg = _Segment(self._dir, first)
        seg.pending += _segment_header(self._generation, first)
        seg.size = SEGMENT_HEADER_BYTES
        self._segments.append(seg)
        self._firsts.append(first)
        return seg

    def sync(self) -> None:
        """Write and fsync everything appended; durable on return (rule 1)."""
        self._check_writable()
        segments = self._segments
        i = len(segments)
        while i > 0 and segments[i - 1].synced_bytes < segments[i - 1].size:
            i -= 1
        for seg in segments[i:]:
            self._sync_segment(seg, seg is not segments[-1])

    def _sync_segment(self, seg: _Segment, sealed: bool) -> None:
        fs = self._fs
        created = False
        try:
            if seg.file is None:
                seg.file = fs.open(seg.path, create=True)
                created = True
                if seg.file.size():  # a stale file of that name cannot be durable data
                    seg.file.truncate(0)
                seg.allocated = 0
            data = seg.pending
            end = seg.file_bytes + len(data)
            if end > seg.allocated and seg.version >= 2 and self._config.preallocate:
                # Once per step of preallocate_step_bytes (the whole segment if None): zeros
                # ahead of the records, so the syncs that follow overwrite in place and change
                # no size.
                size = self._allocation(end)
                seg.file.allocate(size)
                seg.allocated = size
            if data:
                seg.file.pwrite(seg.file_bytes, data)
                seg.allocated = max(seg.allocated, end)
        except OSError:
            self._rollback()
            raise
        with self._lock:
            seg.file_bytes += len(data)
            seg.pending = bytearray()
        try:
            seg.file.fsync()
            if created:
                fs.fsync_dir(self._dir)
        except BaseException as exc:
            self._failed = exc
            raise
        seg.synced_bytes = seg.file_bytes
        self._durable_next = seg.next
        due = len(seg.offsets) - seg.checkpoint_records >= self._config.index_checkpoint_records
        if sealed or due:
            self._write_checkpoint(seg)

    def _allocation(self, end: int) -> int:
        """The size to preallocate a segment to when it must hold ``end`` bytes."""
        full = self._config.segment_bytes_max
        step = self._config.preallocate_step_bytes
        if step is None or end >= full:
            return max(full, end)
        return min(full, -(-end // step) * step)  # ``end`` rounded up to whole steps

    def _rollback(self) -> None:
        """Undo everything not yet durable after a failed write (rule 7)."""
        fs = self._fs
        try:
            with self._lock:
                while self._segments:
                    seg = self._segments[-1]
                    if seg.synced_bytes == seg.size:
                        break
                    if seg.synced_bytes == 0:
                        if seg.file is not None:
                            seg.file.close()
                            if fs.exists(seg.path):
                                fs.remove(seg.path)
                        self._segments.pop()
                        self._firsts.pop()
                        continue
                    keep = bisect.bisect_left(seg.offsets, seg.synced_bytes)
                    del seg.offsets[keep:]
                    assert seg.file is not None
                    # A failed write may have left part of itself (or of an allocation)
                    # past the durable bytes: cut all of it; the next sync allocates again.
                    if seg.file.size() > seg.synced_bytes:
                        seg.file.truncate(seg.synced_bytes)
                    seg.allocated = seg.synced_bytes
                    seg.size = seg.file_bytes = seg.synced_bytes
                    seg.pending = bytearray()
                    break
                self._next = self._segments[-1].next if self._segments else self._empty_at
                self._durable_next = self._next
        except BaseException as exc:
            self._failed = exc
            raise

    def _write_checkpoint(self, seg: _Segment) -> None:
        """Append a block with the offsets of the records made durable since the last one.

        Best effort and without fsync (rule 4): a lost, torn or failed block only costs a scan
        at open. The file only grows between truncations, so a checkpoint costs 8 bytes per
        record once, not a rewrite of the whole index.
        """
        durable_records = bisect.bisect_left(seg.offsets, seg.synced_bytes)
        done = seg.checkpoint_records
        if durable_records <= done:
            return
        block = seg.offsets[done:durable_records]
        if sys.byteorder != "little":
            block.byteswap()
        body = block.tobytes()
        head = _CHECKPOINT_BLOCK.pack(
            CHECKPOINT_MAGIC,
            CHECKPOINT_VERSION,
            self._generation,
            seg.first,
            done,
            durable_records - done,
            seg.synced_bytes,
            0,
        )[:40]
        crc = crc32c.crc32c(body, crc32c.crc32c(head))
        try:
            f = self._fs.open(seg.index_path, create=True)
            try:
                if f.size() != seg.checkpoint_file_bytes:
                    f.truncate(seg.checkpoint_file_bytes)  # cut a torn or stray tail
                f.write(head + crc.to_bytes(4, "little") + body)
            finally:
                f.close()
        except OSError:
            # Start over next time: a half-written block must not sit under later blocks.
            seg.checkpoint_records = seg.checkpoint_bytes = seg.checkpoint_file_bytes = 0
            return
        seg.checkpoint_records = durable_records
        seg.checkpoint_bytes = seg.synced_bytes
        seg.checkpoint_file_bytes += _CHECKPOINT_BLOCK.size + len(body)

    def _drop_checkpoint(self, seg: _Segment) -> bool:
        """Remove ``seg``'s checkpoint file if present; the caller fsyncs the directory."""
        seg.checkpoint_records = seg.checkpoint_bytes = seg.checkpoint_file_bytes = 0
        if self._fs.exists(seg.index_path):
            self._fs.remove(seg.index_path)
            return True
        return False

    def truncate_prefix(self, position: int) -> None:
        """Remove whole segment files whose records are all below ``position`` (rule 5).

        ``first_position`` becomes the first retained record, which may be below
        ``position``; the last segment is always kept. Durable on return.
        """
        self._check_writable()
        fs = self._fs
        with self._lock:
            removed = False
            try:
                # Remove only durable segments, and only when the next one's file is durable:
                # the first remaining file is what tells a reopen the first position.
                while (
                    len(self._segments) > 1
                    and self._segments[1].first <= position
                    and self._segments[0].synced_bytes == self._segments[0].size
                    and self._segments[1].synced_bytes > 0
                ):
                    seg = self._segments[0]
                    if seg.file is not None:
                        seg.file.close()
                        seg.file = None
                    fs.remove(seg.path)
                    self._drop_checkpoint(seg)
                    del self._segments[0]
                    del self._firsts[0]
                    removed = True
                if removed:
                    fs.fsync_dir(self._dir)
            except BaseException as exc:
                self._failed = exc
                raise

    def truncate_suffix(self, position: int) -> None:
        """Drop every record at or after ``position``; durable on return (rule 5).

        The records kept are synced too, so afterwards everything below ``position`` is durable.
        """
        self._check_writable()
        if not self.first_position <= position <= self._next:
            raise PositionError(
                f"truncate_suffix({position}) outside [{self.first_position}, {self._next}]"
            )
        self.sync()  # afterwards every byte is in its file; only files need cutting
        if position == self._next:
            return
        fs = self._fs
        with self._lock:
            try:
                i = bisect.bisect_right(self._firsts, position) - 1
                dir_dirty = False
                while len(self._segments) > i + 1:  # newest first: a crash leaves a prefix
                    seg = self._segments.pop()
                    self._firsts.pop()
                    if seg.file is not None:
                        seg.file.close()
                    fs.remove(seg.path)
                    self._drop_checkpoint(seg)
                    dir_dirty = True
                seg = self._segments[i]
                if seg.first == position and i > 0:
                    self._segments.pop()
                    self._firsts.pop()
                    if seg.file is not None:
                        seg.file.close()
                    fs.remove(seg.path)
                    self._drop_checkpoint(seg)
                    fs.fsync_dir(self._dir)
                else:
                    keep = position - seg.first
                    cut = seg.offsets[keep]
                    # After a failed checkpoint write the counters are 0 while the file may
                    # still hold blocks: drop it then too.
                    if (
                        seg.checkpoint_bytes > cut
                        or seg.checkpoint_records > keep
                        or seg.checkpoint_records == 0
                    ):
                        dir_dirty |= self._drop_checkpoint(seg)
                    if dir_dirty:
                        fs.fsync_dir(self._dir)  # checkpoints gone before bytes are cut
                    assert seg.file is not None
                    # A cut, not zeros written over the records: a torn zeroing could leave
                    # old records after zeros, which open would rightly call corruption. The
                    # next sync preallocates the file again.
                    seg.file.truncate(cut)
                    seg.file.fsync()
                    seg.allocated = cut
                    del seg.offsets[keep:]
                    seg.size = seg.file_bytes = seg.synced_bytes = cut
                self._next = self._durable_next = position
            except BaseException as exc:
                self._failed = exc
                raise

    def reset(self, next_position: int) -> None:
        """Drop everything; the store restarts empty at ``next_position`` (rule 6)."""
        self._check_writable()
        if next_position < 0:
            raise ValueError("next_position must be >= 0")
        fs = self._fs
        with self._lock:
            try:
                generation = self._generation + 1
                meta = posixpath.join(self._dir, META_NAME)
                atomic_write(fs, meta, _META.pack(generation, next_position))
                self._generation = generation
                while self._segments:
                    seg = self._segments.pop()
                    self._firsts.pop()
                    if seg.file is not None:
                        seg.file.close()
                        seg.file = None
                    if fs.exists(seg.path):
                        fs.remove(seg.path)
                    self._drop_checkpoint(seg)
                fs.fsync_dir(self._dir)
                self._empty_at = self._next = self._durable_next = next_position
            except BaseException as exc:
                self._failed = exc
                raise

    def close(self) -> None:
        """Sync what was appended, checkpoint the active segment, release the files."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
                if self._segments:
                    seg = self._segments[-1]
                    if seg.checkpoint_records < len(seg.offsets):
                        self._write_checkpoint(seg)
        finally:
            self._closed = True
            with self._lock:
                for seg in self._segments:
                    if seg.file is not None:
                        seg.file.close()
                        seg.file = None

    # -- reading ------------------------------------------------------------------------

    def _bytes(self, seg: _Segment, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of ``seg``, from its file and/or pending buffer."""
        if start >= seg.file_bytes:
            base = seg.file_bytes
            return bytes(seg.pending[start - base : stop - base])
        if seg.file is None:
            raise StoreClosedError(f"store {self._dir} is closed")
        if stop <= seg.file_bytes:
            data = seg.file.pread(start, stop - start)
        else:
            data = seg.file.pread(start, seg.file_bytes - start) + bytes(
                seg.pending[: stop - seg.file_bytes]
            )
        if len(data) != stop - start:
            raise CorruptionError(
                seg.path, start, f"read {len(data)} bytes, expected {stop - start}"
            )
        return data

    def range_bytes(self, start: int, end: int) -> int:
        """Stored bytes (headers included) of ``[start, end)``, clamped to the store; no I/O."""
        with self._lock:
            start = max(start, self._first())
            end = min(end, self._next)
            total = 0
            position = start
            while position < end:
                seg = self._segments[bisect.bisect_right(self._firsts, position) - 1]
                k_end = min(end - seg.first, len(seg.offsets))
                stop = seg.offsets[k_end] if k_end < len(seg.offsets) else seg.size
                total += stop - seg.offsets[position - seg.first]
                position = seg.first + k_end
            return total

    def read(self, position: int) -> bytes:
        """The payload at ``position``; :class:`PositionError` outside ``[first, next)``."""
        with self._lock:
            if not self._first() <= position < self._next:
                raise PositionError(f"position {position} outside [{self._first()}, {self._next})")
            i = bisect.bisect_right(self._firsts, position) - 1
            seg = self._segments[i]
            k = position - seg.first
            offsets = seg.offsets
            start = offsets[k]
            stop = offsets[k + 1] if k + 1 < len(offsets) else seg.size
            data = self._bytes(seg, start, stop)
        n = _record_ok(data, 0, len(data), self._config.record_bytes_max)
        if n < 0 or n + RECORD_HEADER_BYTES != len(data):
            raise CorruptionError(seg.path, start, f"record at position {position} fails its check")
        return data[RECORD_HEADER_BYTES:]

    def _decode(
        self, seg: _Segment, data: bytes, base: int, k: int, k_end: int, stop: int
    ) -> list[bytes]:
        """Payloads of records ``k..k_end-1`` of ``seg`` from ``data`` (bytes from ``base``),
        each checked against its length and CRC. The work per record runs in C iterators."""
        offsets = seg.offsets
        starts = offsets[k:k_end]
        ends = offsets[k + 1 : k_end + 1]
        if len(ends) < len(starts):
            ends.append(stop)
        n = len(starts)
        heads = list(
            map(_RECORD_HEADER.unpack_from, repeat(data, n), map(sub, starts, repeat(base)))
        )
        payloads = list(
            map(
                data.__getitem__,
                map(
                    slice,
                    map(sub, starts, repeat(base - RECORD_HEADER_BYTES)),
                    map(sub, ends, repeat(base)),
                ),
            )
        )
        lengths = list(map(len, payloads))
        if lengths == list(map(itemgetter(0), heads)) and list(
            map(crc32c.crc32c, payloads, map(_HEAD_CRCS.__getitem__, lengths))
        ) == list(map(itemgetter(1), heads)):
            return payloads
        for j in range(n):  # find the first bad record, to name it
            length, crc = heads[j]
            if length != lengths[j] or crc32c.crc32c(payloads[j], _HEAD_CRCS[length]) != crc:
                raise CorruptionError(
                    seg.path, starts[j], f"record at position {seg.first + k + j} fails its check"
                )
        raise AssertionError("unreachable: a mismatch was found above")

    def read_range(self, start: int, end: int, bytes_max: int | None = None) -> list[bytes]:
        """Payloads of ``[start, end)``; stops before exceeding ``bytes_max`` payload bytes,
        but returns at least one record when the range is not empty."""
        out: list[bytes] = []
        if start > end:
            raise PositionError(f"read_range({start}, {end}): start after end")
        with self._lock:
            if start < self._first() or end > self._next:
                raise PositionError(
                    f"range [{start}, {end}) outside [{self._first()}, {self._next})"
                )
            total = 0
            position = start
            while position < end:
                i = bisect.bisect_right(self._firsts, position) - 1
                seg = self._segments[i]
                offsets = seg.offsets
                count = len(offsets)
                k = position - seg.first
                k_end = min(end - seg.first, count)
                full = True
                if bytes_max is not None:
                    j = k
                    while j < k_end:
                        stop = offsets[j + 1] if j + 1 < count else seg.size
                        size = stop - offsets[j] - RECORD_HEADER_BYTES
                        if total + size > bytes_max and (out or j > k):
                            full = False
                            break
                        total += size
                        j += 1
                    k_end = j
                if k_end > k:
                    base = offsets[k]
                    stop = offsets[k_end] if k_end < count else seg.size
                    data = self._bytes(seg, base, stop)
                    out += self._decode(seg, data, base, k, k_end, stop)
                    position = seg.first + k_end
                if not full:
                    break
        return out
