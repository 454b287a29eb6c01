"""The tamper-evident audit log: what the monitor decided, as a SHA-256 hash chain.

The evidence a site keeps for its regulator: every verdict that is not
plainly compliant, every policy load, every expired exception met, every
start and stop, every alert that could not be delivered (and, when
configured, every flow record). Lines are JSON, one object each, appended
to segments in a directory and never rewritten::

    {"seq":7,"time":"2026-11-29T20:41:07.123456Z","type":"verdict","data":{...},"prev":"…"}

- ``seq`` counts from 1 across all segments and never resets.
- ``prev`` is the SHA-256 (hex) of the exact bytes of the previous line, its
  newline excluded, across segment boundaries; the first line of a fresh log
  has 64 zeros. Changing, removing, inserting or reordering any line breaks
  the chain at the next line.
- Segments are named ``audit-YYYYMMDDTHHMMSSZ[-N].jsonl`` (UTC time opened);
  each begins with a ``segment`` line naming the segment before it, and
  closed ones may be gzip-compressed (``.jsonl.gz``). Order is the name's
  time, then ``N`` (a name without ``-N`` first): :func:`segment_key`.
- What a chain cannot show by itself is a tail cut off at a line boundary.
  So every ``checkpoint_interval`` and at stop a ``checkpoint`` line records
  the head, and the daemon also writes it to its own log (journald): that
  copy, outside the audit directory, is the witness ``audit verify
  --witness SEQ:HASH`` compares with.
- A crash can leave at most one partial last line. The next start never
  touches it: it opens a ``repair`` segment saying how many bytes it
  discards and continues the chain from the last complete line.
- Retention removes whole old segments, after first appending a
  ``retention`` line with the removed names and the seq and hash of their
  last line; verify then accepts a chain that begins at that cut.

Writing costs one JSON encoding, one SHA-256 and one ``write(2)`` per
entry; ``fsync`` runs at most every ``fsync_interval`` seconds (0: after
every entry). An entry is in the kernel before the alert it explains is
handed to the alert threads. A write that fails (disk full, read-only) is
counted and logged and never stops capture: the next entry tries again in
a fresh ``repair`` segment.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import gzip
import hashlib
import json
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .pseudonym import Pseudonymizer

DEFAULT_DIR = "/var/lib/residency-monitor/audit"
GENESIS = "0" * 64
KEYS = ("seq", "time", "type", "data", "prev")
#: entry types; a reader should skip types it does not know (new ones may come)
TYPES = ("segment", "start", "stop", "policy", "verdict", "flow", "exception_expired",
         "alert_failure", "checkpoint", "retention")
SEGMENT_REASONS = ("start", "size", "day", "repair")
LOCK_NAME = ".lock"

_NAME_RE = re.compile(r"^audit-(\d{8}T\d{6}Z)(?:-(\d+))?\.jsonl(\.gz)?$")
_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")

log = logging.getLogger("residency_monitor.audit")


@dataclass(frozen=True)
class AuditConfig:
    """The ``audit:`` section of the daemon's configuration (see configs/residency-monitor.yaml)."""

    enabled: bool = True
    path: str = DEFAULT_DIR
    all_flows: bool = False               # also every compliant/unjudged flow record
    fsync_interval: float = 1.0           # seconds; 0 = after every entry
    rotate_bytes: int = 100 << 20
    rotate_daily: bool = True
    compress: bool = True                 # gzip closed segments
    retention_days: int = 2192            # about six years
    checkpoint_interval: float = 3600.0
    pseudonymize_key_file: str | None = None


# --------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------

_second: list[Any] = [None, ""]     # the last second formatted: entries come many a second


def rfc3339(ts: float) -> str:
    """``2026-11-29T20:41:07.123456Z``: UTC, always six fraction digits."""
    sec = int(ts // 1)
    micro = round((ts - sec) * 1_000_000)
    if micro >= 1_000_000:
        sec, micro = sec + 1, micro - 1_000_000
    cached = _second
    if cached[0] != sec:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        cached[0] = sec
    return f"{cached[1]}.{micro:06d}Z"


_encode_value = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                                 allow_nan=False).encode
_LINE = b'{"seq":%d,"time":"%s","type":%s,"data":%s,"prev":"%s"}'


def encode(seq: int, when: str, kind: str, data: dict[str, Any] | bytes, prev: str) -> bytes:
    """One line's exact bytes (no newline): compact, keys in the fixed order, UTF-8.

    ``data`` may come already encoded (see :func:`record_json`): the line is
    then put together as bytes, never decoded and encoded again.
    """
    body = data if isinstance(data, bytes) else _encode_value(data).encode()
    return _LINE % (seq, when.encode(), _encode_value(kind).encode(), body, prev.encode())


def record_json(rec: Any, pseudonymizer: Pseudonymizer | None = None) -> bytes:
    """A flow record as one compact UTF-8 JSON object, internal addresses pseudonymised.

    orjson, as the records' own output (it reads the dataclass directly): the
    standard library's encoder took about 10 us of the audit's 21 us per
    record (benchmarks/bench_audit.py). A non-finite float (never produced
    by the engine) is written as null, which keeps every line valid JSON.
    """
    if pseudonymizer is None:
        return orjson.dumps(rec)
    return orjson.dumps(pseudonymizer.record(rec.to_dict()))


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def segment_name(ts: float, n: int = 0) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(ts)))
    return f"audit-{stamp}{f'-{n}' if n else ''}.jsonl"


def is_segment_name(name: str) -> bool:
    return _NAME_RE.match(name) is not None


def segment_key(name: str) -> tuple[str, int, str]:
    """Sort key: opening time, then the ``-N`` suffix (none first), then the name.

    Plain name order would put ``audit-X-1.jsonl`` before ``audit-X.jsonl``.
    """
    m = _NAME_RE.match(name)
    return (m.group(1), int(m.group(2) or 0), name) if m else ("~", 0, name)


def segment_stem(name: str) -> str:
    """A segment's identity: its name without ``.gz`` (what headers refer to)."""
    return name[:-3] if name.endswith(".gz") else name


def segment_opened(name: str) -> float | None:
    """When a segment was opened, from its name (UTC epoch seconds)."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(
        tzinfo=dt.timezone.utc).timestamp()


def list_segments(directory: str | os.PathLike[str]) -> list[Path]:
    """The segments in ``directory`` in chain order; a plain file wins over its ``.gz`` twin.

    Both exist only if compression was interrupted; the plain one is complete.
    """
    d = Path(directory)
    names = {p.name for p in d.iterdir() if is_segment_name(p.name)}
    keep = [n for n in names if not (n.endswith(".gz") and n[:-3] in names)]
    return [d / n for n in sorted(keep, key=segment_key)]


def _open_bytes(path: Path) -> Any:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def read_lines(path: Path, chunk: int = 1 << 20) -> Iterator[tuple[bytes, bool]]:
    """``(line, complete)`` for each line (newline removed); only the last may be incomplete.

    Raises :class:`SegmentDamaged` when a ``.gz`` segment cannot be decompressed
    any further (the lines before were yielded).
    """
    buf = b""
    with _open_bytes(path) as f:
        while True:
            try:
                block = f.read(chunk)
            except (OSError, EOFError, zlib.error) as exc:
                raise SegmentDamaged(str(exc) or type(exc).__name__) from None
            if not block:
                break
            buf += block
            *lines, buf = buf.split(b"\n")
            for line in lines:
                yield line, True
    if buf:
        yield buf, False


class SegmentDamaged(Exception):
    """A compressed segment's data is corrupt or cut short."""


@dataclass
class _Tail:
    last: bytes | None      # the last complete line, or None if the file has none
    partial: int            # bytes after the last newline (a crash mid-write)


def _tail(path: Path) -> _Tail:
    """The last complete line and the partial tail, reading plain files from the end."""
    if path.name.endswith(".gz"):
        last, partial = None, 0
        with contextlib.suppress(SegmentDamaged):
            for line, complete in read_lines(path):
                if complete:
                    last = line
                else:
                    partial = len(line)
        return _Tail(last, partial)
    size = path.stat().st_size
    block = 1 << 16
    with open(path, "rb") as f:
        while True:
            start = max(0, size - block)
            f.seek(start)
            data = f.read(size - start)
            cut = data.rfind(b"\n")
            if cut < 0 and start > 0:
                block *= 2
                continue
            partial = len(data) - cut - 1 if cut >= 0 else len(data)
            if cut < 0:
                return _Tail(None, partial)
            before = data.rfind(b"\n", 0, cut)
            if before < 0 and start > 0:
                block *= 2
                continue
            return _Tail(data[before + 1:cut], partial)


def _first_line(path: Path) -> bytes | None:
    with contextlib.suppress(SegmentDamaged, OSError):
        for line, complete in read_lines(path, 1 << 16):
            return line if complete else None
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------

class AuditLog:
    """Appends entries to the hash chain in ``directory``; one writer per directory.

    ``clock`` gives the wall-clock time of each line (tests inject it);
    ``fsync`` is ``os.fsync`` unless a test counts calls. Thread-safe: the
    capture thread writes entries, the alert threads their failures.
    ``strict`` raises the OSError of :meth:`open` instead of carrying on
    without the log (for ``replay --audit``, where a bad directory is a
    usage error).
    """

    def __init__(self, directory: str | os.PathLike[str], *, rotate_bytes: int = 100 << 20,
                 rotate_daily: bool = True, compress: bool = True, fsync_interval: float = 1.0,
                 checkpoint_interval: float = 3600.0, retention_days: int = 2192,
                 clock: Callable[[], float] = time.time,
                 fsync: Callable[[int], None] = os.fsync,
                 on_checkpoint: Callable[[int, str, int, str], None] | None = None,
                 group_bytes: int = 64 << 10):
        self.directory = Path(directory)
        self.rotate_bytes = rotate_bytes
        self.rotate_daily = rotate_daily
        self.compress = compress
        self.fsync_interval = fsync_interval
        self.checkpoint_interval = checkpoint_interval
        self.retention_days = retention_days
        self.clock = clock
        self._fsync = fsync
        self.on_checkpoint = on_checkpoint
        self._lock = threading.RLock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self.seq = 0
        self.head = GENESIS
        self.segment: str | None = None       # current segment's name (plain)
        self._size = 0
        self._day_end = 0.0     # when the current segment's UTC day ends
        self._dirty = False
        self._last_fsync = 0.0
        self._last_checkpoint = 0.0
        self._checkpoint_seq = 0
        self._last_retention = 0.0
        self._broken = False
        self._recovered = False     # the chain's end on disk is known (seq, head)
        self._lost = 0
        # group commit (see append): lines not yet written, their kinds, their size
        self.group_bytes = group_bytes
        self._group: list[bytes] = []
        self._group_kinds: list[str] = []
        self._group_bytes = 0
        self._on_disk: tuple[int, str] = (0, GENESIS)   # (seq, head) of the last line written
        self._workers: list[threading.Thread] = []
        self.counts: dict[str, int] = dict.fromkeys(TYPES, 0)
        self.write_errors = 0
        self.last_write: float | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"AuditLog({str(self.directory)!r}, seq={self.seq})"

    # -- opening -----------------------------------------------------------------------------

    def open(self, strict: bool = False) -> None:
        """Take the directory, continue the chain in a new segment, compress and prune old ones."""
        with self._lock:
            try:
                self._take_directory()
                reason, discarded = self._recover()
                self._new_segment(reason, discarded)
            except OSError as exc:
                if strict:
                    self._release()
                    raise
                self._failed(exc, "opening the audit log")
                return
            self._compress_closed()
            self.apply_retention()

    def _take_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        if self._lock_fd is None:
            fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise OSError(f"{self.directory}: another process writes this audit log "
                              f"(its {LOCK_NAME} is locked)") from None
            self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _recover(self) -> tuple[str, int | None]:
        """Where the chain stands on disk: (reason for the new segment, partial bytes)."""
        segments = list_segments(self.directory)
        for path in reversed(segments):   # a crash between creating and writing a segment
            if path.stat().st_size == 0 and not path.name.endswith(".gz"):
                log.warning("audit: removing the empty segment %s (a crash before its first "
                            "line)", path.name)
                path.unlink()
                segments.pop()
                continue
            break
        self.segment = segment_stem(segments[-1].name) if segments else None
        self._recovered = True
        partial: int | None = None
        for path in reversed(segments):
            tail = _tail(path)
            if partial is None:
                partial = tail.partial
            if tail.last is not None:
                self.head = line_hash(tail.last)
                self.seq = _seq_of(tail.last)
                self._on_disk = (self.seq, self.head)
                break
        if partial:
            log.warning("audit: %s ends in a partial line (%d bytes, a crash); the chain "
                        "continues from the last complete line in a repair segment",
                        self.segment, partial)
            return "repair", partial
        return "start", None

    def _new_segment(self, reason: str, discarded: int | None = None) -> None:
        now = self.clock()
        n = 0
        while True:
            name = segment_name(now, n)
            path = self.directory / name
            if not path.exists() and not (self.directory / (name + ".gz")).exists():
                break
            n += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     0o640)
        data: dict[str, Any] = {"previous_segment": self.segment, "previous_seq": self.seq,
                                "reason": reason}
        if reason == "repair":
            data["discarded_bytes"] = discarded or 0
            if self._lost:
                data["lost_records"] = self._lost
        line = encode(self.seq + 1, rfc3339(now), "segment", data, self.head)
        try:
            _write_all(fd, line + b"\n")
            self._fsync(fd)
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):   # it holds no complete line: nothing lost
                path.unlink()
            raise
        self._fd, self._size = fd, len(line) + 1
        self.segment = name
        self._day_end = (now // 86400 + 1) * 86400
        self._accepted(line, "segment", now)
        self._last_fsync = now
        self._dirty = False
        self._lost = 0
        if not self._last_checkpoint:
            self._last_checkpoint = now

    # -- appending ---------------------------------------------------------------------------

    def append(self, kind: str, data: dict[str, Any] | bytes,
               now: float | None = None) -> int | None:
        """Add one entry; its seq, or None if it could not be written (counted, logged).

        ``data`` is a dict, or its JSON already encoded (:func:`record_json`).
        Entries are written in groups (group commit): a system call per entry
        was a sixth of the audit's cost per record. :meth:`flush` writes the
        group; it runs before any alert is sent about an entry (the daemon
        calls it), at every :meth:`tick` of the daemon's loop, when the group
        reaches ``group_bytes``, and at rotation, checkpoint and close, so a
        crash of the process loses at most the entries of one capture batch
        that no alert has mentioned yet.
        """
        with self._lock:
            if self.closed:
                return None
            when = self.clock() if now is None else now
            if not self._ready(when):
                self._lost += 1
                return None
            try:
                line = encode(self.seq + 1, rfc3339(when), kind, data, self.head)
            except (TypeError, ValueError) as exc:   # a value JSON cannot hold: a bug, say it
                self.write_errors += 1
                log.error("audit: cannot encode a %s entry: %s", kind, exc)
                return None
            self._group.append(line)
            self._group.append(b"\n")
            self._group_kinds.append(kind)
            self._group_bytes += len(line) + 1
            self.seq += 1
            self.head = line_hash(line)
            self.last_write = when
            full = self._group_bytes >= self.group_bytes or self.fsync_interval <= 0
            if full and not self._flush(when):
                return None
            return self.seq

    def flush(self) -> bool:
        """Write the entries added so far (False if the write failed: counted, logged)."""
        with self._lock:
            return self._flush(self.clock())

    def _flush(self, when: float) -> bool:
        if not self._group:
            return True
        group, kinds, size = self._group, self._group_kinds, self._group_bytes
        self._group, self._group_kinds, self._group_bytes = [], [], 0
        if self._fd is None:
            self._unwritten(len(kinds))
            return False
        try:
            _write_all(self._fd, b"".join(group))
            if self.fsync_interval <= 0 or when - self._last_fsync >= self.fsync_interval:
                self._fsync(self._fd)
                self._last_fsync = when
                self._dirty = False
            else:
                self._dirty = True
        except OSError as exc:
            self._failed(exc, "writing the audit log")
            self._unwritten(len(kinds))
            return False
        self._size += size
        counts = self.counts
        for kind in kinds:
            counts[kind] = counts.get(kind, 0) + 1
        self._on_disk = (self.seq, self.head)
        return True

    def _unwritten(self, n: int) -> None:
        """A group that did not reach the disk: the chain goes back to what did."""
        self._lost += n
        self.seq, self.head = self._on_disk

    def _ready(self, when: float) -> bool:
        """A segment to write to: reopened after a failure, rotated when due."""
        if self._fd is None and not self._reopen():
            return False
        try:
            if self._size + self._group_bytes >= self.rotate_bytes:
                self._rotate("size", when)
            elif self.rotate_daily and when >= self._day_end:
                self._rotate("day", when)
                self.apply_retention(when)
        except OSError as exc:
            self._failed(exc, "rotating the audit log")
            return False
        return self._fd is not None

    def _accepted(self, line: bytes, kind: str, when: float) -> None:
        """A line written directly (segment headers), not through the group."""
        self.seq += 1
        self.head = line_hash(line)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.last_write = when
        self._on_disk = (self.seq, self.head)

    def _failed(self, exc: OSError, doing: str) -> None:
        """Count, log the first failure of a series, drop the segment; the next entry retries."""
        self.write_errors += 1
        if not self._broken:
            log.error("audit: %s failed: %s; capture goes on, the next entry retries",
                      doing, exc, extra={"event": "audit_error", "error": str(exc)})
        self._broken = True
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _reopen(self) -> bool:
        """After a failure: a new segment, saying what the failed one left behind."""
        lost = self._lost
        try:
            self._take_directory()
            if not self._recovered:     # the first open failed: find the chain's end now
                reason, partial = self._recover()
                self._new_segment(reason, partial)
                self._broken = False
                return True
            discarded = 0
            if self.segment is not None:
                current = self.directory / self.segment
                if current.exists():
                    tail = _tail(current)
                    discarded = tail.partial
                    if tail.last is not None:   # a group cut short may have left whole lines
                        self.seq, self.head = _seq_of(tail.last), line_hash(tail.last)
                        self._on_disk = (self.seq, self.head)
            self._new_segment("repair", discarded)
        except OSError as exc:
            self._failed(exc, "reopening the audit log")
            return False
        log.warning("audit: writing again in %s after errors (%d entries lost)",
                    self.segment, lost, extra={"event": "audit_recovered"})
        self._broken = False
        return True

    def _rotate(self, reason: str, now: float) -> None:
        if not self._flush(now):
            return      # the write failed and the segment is dropped: _ready retries later
        old = self.segment
        assert self._fd is not None
        self._fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        self._new_segment(reason)
        if self.compress and old is not None:
            self._compress_later(self.directory / old)

    # -- timers ------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Called from the daemon's loop: fsync when due, checkpoint when due, daily pruning."""
        with self._lock:
            if self.closed:
                return
            when = self.clock() if now is None else now
            self._flush(when)
            if self._fd is not None and self._dirty and \
                    when - self._last_fsync >= self.fsync_interval:
                try:
                    self._fsync(self._fd)
                except OSError as exc:
                    self._failed(exc, "syncing the audit log")
                else:
                    self._last_fsync = when
                    self._dirty = False
            if self.checkpoint_interval and when - self._last_checkpoint >= \
                    self.checkpoint_interval:
                self.checkpoint(when)
            if when - self._last_retention >= 86400:
                self.apply_retention(when)

    def checkpoint(self, now: float | None = None) -> int | None:
        """A ``checkpoint`` line, fsynced, and the witness handed to ``on_checkpoint``."""
        with self._lock:
            when = self.clock() if now is None else now
            self._last_checkpoint = when
            if self.seq == self._checkpoint_seq:
                return None    # nothing new since the last one
            if not self._ready(when):   # a rotation first: the checkpoint names the line
                return None             # just before it
            records, head = self.seq, self.head
            seq = self.append("checkpoint", {"records": records, "head": head}, when)
            if seq is None:
                return None
            self._checkpoint_seq = seq
            self.sync()
            if self.on_checkpoint is not None:
                self.on_checkpoint(records, head, seq, self.head)
            return seq

    def sync(self) -> None:
        with self._lock:
            if not self._flush(self.clock()):
                return
            if self._fd is not None and self._dirty:
                try:
                    self._fsync(self._fd)
                except OSError as exc:
                    self._failed(exc, "syncing the audit log")
                    return
                self._last_fsync = self.clock()
                self._dirty = False

    def close(self) -> None:
        """Checkpoint, fsync and close; wait for compressions under way."""
        with self._lock:
            if self.closed:
                return
            self.checkpoint()
            self.sync()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self.closed = True
            self._release()
        for worker in list(self._workers):
            worker.join()

    # -- compression -------------------------------------------------------------------------

    def _compress_closed(self) -> None:
        """At start: closed segments a previous run left plain (its last, or interrupted)."""
        if not self.compress:
            return
        for tmp in self.directory.glob("audit-*.jsonl.gz.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
        for path in list_segments(self.directory):
            if not path.name.endswith(".gz") and path.name != self.segment:
                self._compress_later(path)

    def _compress_later(self, path: Path) -> None:
        worker = threading.Thread(target=self._compress_one, args=(path,), daemon=True,
                                  name=f"audit-gzip {path.name}")
        self._workers = [w for w in self._workers if w.is_alive()] + [worker]
        worker.start()

    def _compress_one(self, path: Path) -> None:
        """gzip to a temporary file, fsync, rename, then remove the plain one."""
        target = path.with_name(path.name + ".gz")
        tmp = path.with_name(path.name + ".gz.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            with open(path, "rb") as src, open(fd, "wb") as raw:
                with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, mtime=0) as gz:
                    while block := src.read(1 << 20):
                        gz.write(block)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, target)
            _fsync_dir(self.directory)
            path.unlink()
        except OSError as exc:
            log.warning("audit: compressing %s failed (%s); it stays uncompressed",
                        path.name, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    # -- retention ---------------------------------------------------------------------------

    def apply_retention(self, now: float | None = None) -> list[str]:
        """Remove segments whose every line is older than the retention; names removed.

        A segment's last line is older than the next segment's opening time,
        so the names decide without reading the files. The ``retention``
        line goes first (fsynced), then the files: a crash in between
        leaves files that a later run removes again.
        """
        with self._lock:
            when = self.clock() if now is None else now
            self._last_retention = when
            if not self.retention_days or self._fd is None:
                return []
            cutoff = when - self.retention_days * 86400
            segments = list_segments(self.directory)
            doomed: list[Path] = []
            for path, after in zip(segments, segments[1:], strict=False):
                opened = segment_opened(after.name)
                if opened is None or opened >= cutoff or \
                        segment_stem(path.name) == self.segment:
                    break
                doomed.append(path)
            if not doomed:
                return []
            first_kept = segments[len(doomed)]
            header = _first_line(first_kept)
            try:
                entry = json.loads(header) if header else {}
                last_seq, last_hash = entry["data"]["previous_seq"], entry["prev"]
            except (ValueError, KeyError, TypeError):
                log.error("audit: retention skipped: %s does not begin with a segment header",
                          first_kept.name)
                return []
            names = [segment_stem(p.name) for p in doomed]
            seq = self.append("retention", {
                "removed": names, "last_seq": last_seq, "last_hash": last_hash,
                "retention_days": self.retention_days, "first_kept": first_kept.name}, when)
            if seq is None:
                return []
            self.sync()
            for path in doomed:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            with contextlib.suppress(OSError):
                _fsync_dir(self.directory)
            log.info("audit: retention removed %d segment(s) older than %d days: %s ... %s "
                     "(up to seq %d, last hash %s)", len(names), self.retention_days, names[0],
                     names[-1], last_seq, last_hash, extra={"event": "audit_retention"})
            return names

    # -- metrics -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """For the metrics collector: entries by type, write errors, last write time."""
        with self._lock:
            return {"records": dict(self.counts), "write_errors": self.write_errors,
                    "last_write": self.last_write}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError("short write")
        view = view[n:]


def _seq_of(line: bytes) -> int:
    try:
        return int(json.loads(line)["seq"])
    except (ValueError, KeyError, TypeError):
        m = re.search(rb'"seq":(\d+)', line)
        return int(m.group(1)) if m else 0


# --------------------------------------------------------------------------------------------
# What the monitor writes: events to entries
# --------------------------------------------------------------------------------------------

PLAIN = ("compliant", None)
_LIVE_REMEMBERED = 100_000


class Auditor:
    """Decides what of the monitor's events goes into the audit log, and in what shape.

    - a flow record whose verdict is anything but ``compliant`` (or none) is a
      ``verdict`` entry (interim ones too: ``data.final`` says which); every
      other record a ``flow`` entry when ``all_flows``;
    - a live verdict (alerted before its flow ends) is a ``verdict`` entry
      with ``data.stage == "live"``, written once per flow and set of rules
      (a handshake that only confirms what the first packet showed adds none);
      the flow's own record follows when it ends, so count flows by entries
      without ``stage``;
    - an expired exception met by a flow is an ``exception_expired`` entry
      at most once per exception and UTC day of the flow.
    Internal addresses are pseudonymised first when a key is configured.
    """

    def __init__(self, log: AuditLog, *, all_flows: bool = False,
                 pseudonymizer: Pseudonymizer | None = None,
                 exceptions: Callable[[str], Any] | None = None):
        self.log = log
        self.all_flows = all_flows
        self.pseudonymizer = pseudonymizer
        self.exceptions = exceptions or (lambda _name: None)
        self._live: dict[tuple, frozenset[str]] = {}
        self._expired_seen: set[tuple[str, str]] = set()

    def record(self, rec: Any) -> None:
        """A flow record (interim or final)."""
        if rec.verdict in PLAIN:
            if not self.all_flows:
                return
            kind = "flow"
        else:
            kind = "verdict"
        self.log.append(kind, record_json(rec, self.pseudonymizer))
        if rec.final and self._live:
            self._live.pop((rec.client_ip, rec.server_ip, rec.server_port, rec.ts_start), None)
        if rec.exception_expired:
            self._expired(rec)

    def live(self, key: tuple, data: dict[str, Any]) -> None:
        """A live verdict: ``key`` identifies the flow, ``data`` has record field names."""
        rules = frozenset(data.get("violations") or ())
        if self._live.get(key) == rules:
            return
        if len(self._live) >= _LIVE_REMEMBERED:
            self._live.clear()     # flows that never ended (evicted without a record)
        self._live[key] = rules
        if self.pseudonymizer is not None:
            data = self.pseudonymizer.record(data)
        self.log.append("verdict", {"stage": "live", **data})

    def _expired(self, rec: Any) -> None:
        name = rec.exception_expired
        day = time.strftime("%Y-%m-%d", time.gmtime(rec.detected_at or rec.ts_start))
        if (name, day) in self._expired_seen:
            return
        if len(self._expired_seen) > 10_000:
            self._expired_seen.clear()
        self._expired_seen.add((name, day))
        exc = self.exceptions(name)
        expires = getattr(exc, "expires", None)
        data = rec.to_dict()
        if self.pseudonymizer is not None:
            data = self.pseudonymizer.record(data)
        flow = {k: data.get(k) for k in (
            "ts_start", "client_ip", "client_port", "server_ip", "server_port", "transport",
            "tls_sni", "dst_country", "zone", "verdict", "violations")}
        self.log.append("exception_expired", {
            "exception": name, "owner": getattr(exc, "owner", None),
            "expired": expires.isoformat() if expires is not None else None, "flow": flow})

    def policy(self, policy: Any, *, path: str | None, trigger: str,
               errors: Sequence[str] = ()) -> None:
        """A policy load: ``policy`` is the loaded one, or None when it was refused."""
        if policy is not None:
            self.log.append("policy", {"name": policy.name, "sha256": policy.sha256,
                                       "path": path or policy.source, "trigger": trigger,
                                       "result": "loaded", "errors": []})
            return
        digest = None
        if path:
            with contextlib.suppress(OSError):
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        self.log.append("policy", {"name": None, "sha256": digest, "path": path,
                                   "trigger": trigger, "result": "refused",
                                   "errors": list(errors)})

    def start(self, **data: Any) -> None:
        self.log.append("start", data)

    def stop(self, **data: Any) -> None:
        self.log.append("stop", data)

    def alert_failure(self, url: str | None, error: str, queued: int | None) -> None:
        self.log.append("alert_failure", {"url": url, "error": error, "queued": queued})


def live_data(*, ts_start: float, detected_at: float, client_ip: str, client_port: int | None,
              server_ip: str, server_port: int, transport: str, app: str, tls_sni: str | None,
              tls_version: str | None, dst_country: str | None, verdict: Any) -> dict[str, Any]:
    """A live verdict's entry data, with the flow record's field names."""
    return {"ts_start": ts_start, "detected_at": detected_at,
            "detection_latency_s": round(detected_at - ts_start, 6), "client_ip": client_ip,
            "client_port": client_port, "server_ip": server_ip, "server_port": server_port,
            "transport": transport, "app": app, "tls_sni": tls_sni, "tls_version": tls_version,
            "dst_country": dst_country, "zone": verdict.zone,
            "classification": verdict.classification, "verdict": verdict.verdict,
            "violations": list(verdict.violations), "exception": verdict.exception,
            "exception_expired": verdict.exception_expired,
            "explanation": verdict.explanation}


class AlertFailureHandler(logging.Handler):
    """Turns the alert client's warnings and errors into ``alert_failure`` entries.

    The Alertmanager client reports delivery failures only to its logger
    (first failure of an outage, queue overflow, refusals, alerts left at
    shutdown); this handler, attached to that logger, audits each of them.
    Its messages start with ``alertmanager <url>:``.
    """

    def __init__(self, auditor: Auditor, queued: Callable[[str], int | None] | None = None):
        super().__init__(logging.WARNING)
        self.auditor = auditor
        self.queued = queued or (lambda _url: None)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            url = None
            if message.startswith("alertmanager ") and record.args and \
                    isinstance(record.args, tuple) and isinstance(record.args[0], str):
                url = record.args[0]
            self.auditor.alert_failure(url, message, self.queued(url) if url else None)
        except Exception:   # never let auditing break the alert threads
            self.handleError(record)


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class VerifyResult:
    records: int = 0          # complete lines checked
    segments: int = 0
    first_seq: int = 0
    last_seq: int = 0
    head: str = GENESIS
    problem: Problem | None = None
    warnings: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        if self.problem is not None:
            return str(self.problem)
        return f"OK: {self.records} records in {self.segments} segments, head {self.head}"

    def to_dict(self) -> dict[str, Any]:
        def one(p: Problem) -> dict[str, Any]:
            return {"file": p.file, "line": p.line, "message": p.message}
        return {"ok": self.ok, "records": self.records, "segments": self.segments,
                "first_seq": self.first_seq, "last_seq": self.last_seq, "head": self.head,
                "problem": one(self.problem) if self.problem else None,
                "warnings": [one(w) for w in self.warnings], "notes": list(self.notes)}


@dataclass
class _Line:
    file: str
    lineno: int
    raw: bytes
    hash: str
    obj: dict[str, Any]
    first_in_segment: bool


class _Broken(Exception):
    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def parse_witness(text: str) -> tuple[int | None, str]:
    """``SEQ:HASH`` or ``HASH`` (as the daemon logs at each checkpoint)."""
    seq, sep, digest = text.rpartition(":")
    digest = digest.strip().lower()
    if not _HEX_RE.match(digest) or (sep and not seq.strip().isdigit()):
        raise ValueError(f"expected SEQ:HASH or HASH (64 hex digits), got {text!r}")
    return (int(seq) if sep else None), digest


def verify(paths: Sequence[str | os.PathLike[str]], *,
           witness: tuple[int | None, str] | None = None) -> VerifyResult:
    """Check the chain over directories and/or segment files; the first break is the result.

    A directory means all its segments, and then a chain that begins after
    a missing segment is accepted only if a ``retention`` line accounts for
    it. Segment files named one by one may begin anywhere (a note says so).
    """
    chosen: dict[str, Path] = {}
    explicit = False
    for p in map(Path, paths):
        found = list_segments(p) if p.is_dir() else [p]
        explicit = explicit or not p.is_dir()
        for f in found:
            stem = segment_stem(f.name)
            if stem not in chosen or chosen[stem].name.endswith(".gz"):
                chosen[stem] = f      # the plain twin of an interrupted compression wins
    ordered = sorted(chosen.values(), key=lambda f: segment_key(f.name))
    return _Verifier(ordered, explicit, witness).run()


class _Verifier:
    """One pass over the lines in chain order, with one line of look-ahead."""

    def __init__(self, files: list[Path], explicit: bool,
                 witness: tuple[int | None, str] | None):
        self.files = files
        self.explicit = explicit
        self.witness = witness
        self.result = VerifyResult(segments=len(files))
        self.prev: _Line | None = None       # the last complete line checked
        self.suspect: _Line | None = None    # its prev did not match: decided at the next line
        self.before_suspect: _Line | None = None
        self.cut: tuple[_Line, str, int, str] | None = None  # begins after a removed segment
        self.retentions: list[dict[str, Any]] = []
        self.witness_seen = False

    def run(self) -> VerifyResult:
        try:
            self._walk()
            self._finish()
        except _Broken as broken:
            self.result.problem = broken.problem
        return self.result

    def _walk(self) -> None:
        previous: Path | None = None
        tail = (0, 0)                      # the previous segment's partial bytes, and line
        for path in self.files:
            name = str(path)
            lineno = partial = 0
            try:
                for raw, complete in read_lines(path):
                    lineno += 1
                    if not complete:
                        partial = len(raw)
                        break
                    line = self._parse(name, lineno, raw, lineno == 1)
                    if self.suspect is not None:
                        self._settle_suspect(line)
                    if lineno == 1:
                        self._header(line, previous, tail)
                    elif line.obj["type"] == "segment":
                        raise _Broken(Problem(name, lineno, "a segment header inside a segment "
                                                            "(lines moved between segments)"))
                    self._chain(line)
            except SegmentDamaged as exc:
                self._settle_suspect(None)
                raise _Broken(Problem(name, lineno + 1, f"compressed segment damaged ({exc}): "
                                                        f"nothing after line {lineno} can be "
                                                        f"read")) from None
            except OSError as exc:
                raise _Broken(Problem(name, 0, f"cannot read: {exc}")) from None
            if lineno == 0:
                self.result.warnings.append(Problem(name, 0, "empty segment"))
            previous, tail = path, (partial, lineno)
        self._settle_suspect(None)
        if tail[0]:
            assert previous is not None
            self.result.warnings.append(Problem(
                str(previous), tail[1],
                f"partial last line ({tail[0]} bytes): the writer stopped mid-line (a crash, "
                f"or it is writing now); its next start opens a repair segment"))
        elif self.prev is not None and self.prev.obj["type"] not in ("checkpoint", "stop") \
                and self.witness is None:
            self.result.notes.append(
                "the log does not end with a checkpoint: the writer is running or crashed, or "
                "its tail was removed (compare with the last checkpoint in the daemon's log: "
                "--witness SEQ:HASH)")

    def _parse(self, name: str, lineno: int, raw: bytes, first: bool) -> _Line:
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            self._settle_suspect(None)
            reason = str(exc).split(":")[0]
            raise _Broken(Problem(name, lineno, f"not valid JSON ({reason}): the line was "
                                                f"modified")) from None
        bad = _shape(obj)
        if bad:
            self._settle_suspect(None)
            raise _Broken(Problem(name, lineno, f"{bad}: the line was modified"))
        return _Line(name, lineno, raw, line_hash(raw), obj, first)

    def _header(self, line: _Line, previous: Path | None, tail: tuple[int, int]) -> None:
        obj, data = line.obj, line.obj["data"]
        here = (line.file, line.lineno)
        if obj["type"] != "segment":
            raise _Broken(Problem(*here, "a segment must begin with a segment header"))
        bad = _header_shape(data)
        if bad:
            raise _Broken(Problem(*here, f"bad segment header: {bad}"))
        if data["previous_seq"] != obj["seq"] - 1:
            raise _Broken(Problem(*here, f"previous_seq {data['previous_seq']} does not match "
                                         f"seq {obj['seq']}: the header was modified"))
        named = data["previous_segment"]
        if previous is None:
            if named is None:
                if obj["seq"] != 1 or obj["prev"] != GENESIS:
                    raise _Broken(Problem(*here, "a fresh log's first line must have seq 1 and "
                                                 "a prev of zeros"))
            else:   # begins after a segment that is not here: retention, or a missing segment
                self.cut = (line, named, data["previous_seq"], obj["prev"])
            return
        last = self.prev.obj["seq"] if self.prev is not None else 0
        if named != segment_stem(previous.name):
            if named is None:
                raise _Broken(Problem(*here, f"a fresh-log header after {previous.name}"))
            if named not in {segment_stem(f.name) for f in self.files}:
                raise _Broken(Problem(*here, f"previous segment {named} is missing (records "
                                             f"{last + 1} to {data['previous_seq']}); "
                                             f"{previous.name} comes before this one"))
            raise _Broken(Problem(*here, f"this segment follows {named}, but {previous.name} "
                                         f"comes before it: segments reordered or renamed"))
        partial, partial_line = tail
        if partial and (data["reason"] != "repair" or data.get("discarded_bytes") != partial):
            raise _Broken(Problem(str(previous), partial_line,
                                  f"partial last line ({partial} bytes) that the next segment "
                                  f"does not acknowledge as a repair (truncated or modified)"))
        if not partial and data["reason"] == "repair" and data.get("discarded_bytes"):
            raise _Broken(Problem(*here, f"the repair header says {data['discarded_bytes']} "
                                         f"bytes were discarded, but {previous.name} ends in a "
                                         f"complete line (its tail was removed)"))
        if self.prev is not None and obj["seq"] > last + 1:
            raise _Broken(Problem(self.prev.file, self.prev.lineno,
                                  f"the chain ends at seq {last} here, but the next segment "
                                  f"continues from seq {data['previous_seq']}: truncated after "
                                  f"this line"))

    def _chain(self, line: _Line) -> None:
        res = self.result
        seq, prev = line.obj["seq"], line.obj["prev"]
        if self.prev is None:
            res.first_seq = seq
        else:
            expected = self.prev.obj["seq"] + 1
            if seq > expected:
                gone = f"seq {expected}" if seq == expected + 1 else \
                    f"seq {expected} to {seq - 1}"
                raise _Broken(Problem(line.file, line.lineno,
                                      f"seq {seq} follows seq {expected - 1}: {gone} missing "
                                      f"before this line (deleted)"))
            if seq < expected:
                raise _Broken(Problem(line.file, line.lineno,
                                      f"seq {seq} after seq {expected - 1}: lines reordered or "
                                      f"duplicated"))
            if prev != self.prev.hash:
                self.suspect, self.before_suspect = line, self.prev
        kind, data = line.obj["type"], line.obj["data"]
        if kind == "checkpoint" and self.prev is not None and self.suspect is None and (
                data.get("records") != self.prev.obj["seq"] or data.get("head") != self.prev.hash):
            raise _Broken(Problem(line.file, line.lineno,
                                  "the checkpoint does not match the line before it (modified)"))
        if kind == "retention":
            self.retentions.append(data)
        self._witness(line)
        self.prev = line
        res.records += 1
        res.last_seq = seq
        res.head = line.hash

    def _settle_suspect(self, nxt: _Line | None) -> None:
        """Which line a prev mismatch points at, now that the next line is known.

        Line j's prev does not match line j-1: if line j+1's prev matches
        line j, line j-1 was changed; if it fails too, line j was.
        """
        sus, before = self.suspect, self.before_suspect
        if sus is None or before is None:
            return
        self.suspect = None
        vouched = sus.obj["type"] == "checkpoint" and sus.obj["data"].get("head") == \
            sus.obj["prev"]   # a checkpoint repeats its prev: it agrees with itself
        if nxt is None and (vouched or self.witness_seen and sus is self.prev
                            and self.witness is not None and self.witness[1] == sus.hash):
            nxt = sus   # the last line is vouched for: the one before it changed
        elif nxt is None:
            raise _Broken(Problem(sus.file, sus.lineno,
                                  f"prev does not match the hash of {before.file}:"
                                  f"{before.lineno} (that line or this one was modified)"))
        if nxt is not sus and nxt.obj["prev"] != sus.hash:
            raise _Broken(Problem(sus.file, sus.lineno,
                                  "this line was modified or inserted: its prev does not match "
                                  "the line before it, nor does the next line's prev match it"))
        raise _Broken(Problem(before.file, before.lineno,
                              f"this line was modified: its hash does not match the prev of "
                              f"the next line ({sus.file}:{sus.lineno})"))

    def _witness(self, line: _Line) -> None:
        if self.witness is None:
            return
        seq, digest = self.witness
        if seq is not None and line.obj["seq"] == seq:
            if line.hash != digest:
                raise _Broken(Problem(line.file, line.lineno,
                                      f"this line (seq {seq}) does not have the witnessed hash "
                                      f"{digest}: modified"))
            self.witness_seen = True
        elif seq is None and line.hash == digest:
            self.witness_seen = True

    def _finish(self) -> None:
        res = self.result
        if self.cut is not None:
            line, named, last_seq, last_hash = self.cut
            if any(isinstance(r.get("removed"), list) and named in r["removed"]
                   and r.get("last_seq") == last_seq and r.get("last_hash") == last_hash
                   for r in self.retentions):
                res.notes.append(f"begins after retention cut at seq {last_seq} (segments up to "
                                 f"{named} removed)")
            elif self.explicit:
                res.notes.append(f"begins at seq {last_seq + 1}, after {named}, which was not "
                                 f"given: earlier segments not checked")
            else:
                raise _Broken(Problem(line.file, line.lineno,
                                      f"begins after segment {named}, which is missing, and no "
                                      f"retention line accounts for its removal (records 1 to "
                                      f"{last_seq} gone)"))
        if self.witness is not None and not self.witness_seen:
            seq, digest = self.witness
            last = self.prev
            where = (last.file, last.lineno) if last else (str(self.files[-1]), 0)
            if seq is not None and res.last_seq < seq:
                raise _Broken(Problem(*where, f"the log ends here at seq {res.last_seq}, but the "
                                              f"witness says seq {seq} was written: records "
                                              f"{res.last_seq + 1} to {seq} truncated"))
            raise _Broken(Problem(*where, f"the witnessed hash {digest} is not in the log: "
                                          f"truncated or rewritten"))


def _shape(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return "not a JSON object"
    if tuple(obj) != KEYS:
        return f"keys {list(obj)} instead of {list(KEYS)}"
    seq, when, kind, data, prev = (obj[k] for k in KEYS)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "seq is not a positive integer"
    if not isinstance(when, str) or not _TIME_RE.match(when):
        return "time is not RFC 3339 UTC with microseconds"
    if not isinstance(kind, str) or not kind:
        return "type is not a name"
    if not isinstance(data, dict):
        return "data is not an object"
    if not isinstance(prev, str) or not _HEX_RE.match(prev):
        return "prev is not 64 hex digits"
    return None


def _header_shape(data: dict[str, Any]) -> str | None:
    missing = [k for k in ("previous_segment", "previous_seq", "reason") if k not in data]
    if missing:
        return f"{', '.join(missing)} missing"
    named, seq, reason = (data.get(k) for k in ("previous_segment", "previous_seq", "reason"))
    if named is not None and not (isinstance(named, str) and is_segment_name(named)):
        return "previous_segment is not a segment name"
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return "previous_seq is not a count"
    if reason not in SEGMENT_REASONS:
        return f"reason {reason!r} is not one of {', '.join(SEGMENT_REASONS)}"
    return None
