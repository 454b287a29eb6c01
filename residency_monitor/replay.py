"""Replay capture files through the engine: the offline driver.

Several files are read as one timeline (rotated captures continue each
other's flows), as ``tcpdump -r`` and ``zeek -r`` do. Damage is reported,
never fatal: a file cut mid-record yields what it holds, and a file that
cannot be opened at all is named and skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .capture.files import CaptureError, open_capture
from .engine import Engine, EngineConfig, RecordSink

EXIT_OK = 0
EXIT_NOTHING_READ = 3     # no packet could be read from any input
EXIT_UNREADABLE = 4       # some input could not be opened at all (others were processed)


@dataclass
class ReplayResult:
    packets: int = 0
    records: int = 0
    files_read: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    decode_errors: dict[str, int] = field(default_factory=dict)
    inspect_errors: dict[str, int] = field(default_factory=dict)
    truncated_frames: int = 0
    flow_stats: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.packets == 0 and (self.errors or self.files_read == 0 or self.warnings):
            return EXIT_NOTHING_READ
        if self.errors:
            return EXIT_UNREADABLE
        return EXIT_OK


def _frames(reader, progress) -> Iterable[tuple[float, int, bytes, int]]:
    """The reader itself, or (on a terminal) the reader with a progress counter around it."""
    return reader if progress is None else _counted(reader, progress)


def _counted(reader, progress) -> Iterator[tuple[float, int, bytes, int]]:
    for i, item in enumerate(reader, 1):
        if not i & 0xFFFF:
            progress(i)
        yield item


def replay(paths: Iterable[str | os.PathLike], sink: RecordSink,
           config: EngineConfig | None = None, progress=None,
           engine: Engine | None = None) -> ReplayResult:
    """Run every capture through one engine; records go to ``sink`` as flows end."""
    eng = engine or Engine(config, sink)
    res = ReplayResult()
    for path in paths:
        name = os.fspath(path)
        try:
            reader = open_capture(path)
        except (CaptureError, OSError) as exc:
            res.errors.append(f"{name}: {exc}" if name not in str(exc) else str(exc))
            continue
        with reader:
            eng.run(_frames(reader, progress), source=name)
        res.files_read += 1
        st = reader.stats
        res.truncated_frames += st.truncated_frames
        if st.damaged:
            res.warnings.append(st.damaged)
        if st.frames == 0 and not st.damaged:
            res.warnings.append(f"{name}: no packets in this capture")
    eng.finish()
    res.packets = eng.packets
    res.records = eng.records
    res.decode_errors = eng.decode_errors
    res.inspect_errors = eng.inspect_errors
    res.flow_stats = dict(eng.table.stats)
    for kind, issue in eng.first_issue.items():
        count = eng.bad[kind]
        if kind == "unknown_link":
            res.warnings.append(f"{issue.source}: {count} frame(s) of an unsupported {issue.reason}"
                                f" skipped (first: packet {issue.frame_number})")
        elif kind in ("malformed", "truncated"):
            res.warnings.append(f"{issue.source}: {count} {kind} frame(s) counted and skipped "
                                f"(first: packet {issue.frame_number}, {issue.reason})")
    return res


def stderr_progress(total_label: str = ""):
    """A progress callback that rewrites one terminal line, or None when not a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(n: int) -> None:
        sys.stderr.write(f"\r{total_label}{n:,} packets")
        sys.stderr.flush()

    return show


