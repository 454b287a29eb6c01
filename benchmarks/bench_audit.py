#!/usr/bin/env python3
"""What the audit log costs the replay: every flow record appended, against none.

The issue's target: appending to the audit log costs under 5 % of replay
throughput on the bench capture with every record logged. Two ways to see it,
printed side by side:

* **Whole replays, interleaved.** The bench capture is replayed in-process
  (engine, residency policy and geolocation, as the daemon runs them) with the
  records going to a null sink, then with every record appended to a fresh
  audit log (``all_flows``, fsync every second, the defaults otherwise:
  100 MiB segments, gzip of closed ones in a background thread). Runs
  alternate (null, audit, null, audit ...) so drift on a shared VM hits both;
  the overhead is the median of the per-round ratios, and the medians are
  printed too.
* **The audit calls alone.** In the audit runs each ``Auditor.record`` call is
  timed with ``perf_counter``; their sum over the replay's wall time is the
  share the audit log takes, which a busy neighbour disturbs far less than a
  difference of two wall times.

Also printed: records and entries, bytes per entry (plain and as gzip would
store a segment), and the fsync calls made. Nothing is asserted.

Usage, from the project root::

    python3 benchmarks/bench_audit.py [--capture bench-data/bench.pcap] [--runs 3]

Without ``--capture`` it uses ``bench-data/bench.pcap`` (1M packets),
generating it with ``../shared/bench/make_bench_pcap.py --seed 1`` if missing.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from residency_monitor.audit import AuditLog, Auditor, list_segments  # noqa: E402
from residency_monitor.engine import Engine  # noqa: E402
from residency_monitor.geo import GeoConfig, Geolocator  # noqa: E402
from residency_monitor.policy import default_policy  # noqa: E402
from residency_monitor.records import FlowRecord  # noqa: E402
from residency_monitor.replay import replay  # noqa: E402
from residency_monitor.residency import Residency  # noqa: E402

GENERATOR = ROOT.parent / "shared" / "bench" / "make_bench_pcap.py"
DEFAULT_CAPTURE = ROOT / "bench-data" / "bench.pcap"


def ensure_capture(path: Path, packets: int) -> Path:
    if path.exists():
        return path
    if not GENERATOR.is_file():
        sys.exit(f"{path} is missing and the generator {GENERATOR} is not there")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(GENERATOR), "--packets", str(packets), "--seed", "1",
                    "--out", str(path)], check=True)
    return path


def run_null(capture: Path) -> tuple[float, int, int]:
    """Replay with records dropped: (seconds, packets, records)."""
    residency = Residency(default_policy(), Geolocator(GeoConfig()))

    def sink(_rec: FlowRecord) -> None:
        pass

    engine = Engine(sink=sink, enrich=residency)
    start = time.perf_counter()
    res = replay([capture], sink, engine=engine)
    return time.perf_counter() - start, res.packets, res.records


class Counted:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        os.fsync(fd)


def run_audit(capture: Path, directory: Path, all_flows: bool = True) -> dict[str, float]:
    """Replay with every record (or, as the daemon's default, verdicts only) audited."""
    shutil.rmtree(directory, ignore_errors=True)
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    fsync = Counted()
    log = AuditLog(directory, fsync_interval=1.0, fsync=fsync)
    log.open(strict=True)
    auditor = Auditor(log, all_flows=all_flows)
    spent = 0.0
    clock = time.perf_counter

    def sink(rec: FlowRecord) -> None:
        nonlocal spent
        t = clock()
        auditor.record(rec)
        spent += clock() - t

    engine = Engine(sink=sink, enrich=residency)
    start = clock()
    res = replay([capture], sink, engine=engine)
    t = clock()
    log.close()
    spent += clock() - t
    wall = clock() - start
    plain = sum(p.stat().st_size for p in list_segments(directory)
                if not p.name.endswith(".gz"))
    gz = sum(p.stat().st_size for p in list_segments(directory) if p.name.endswith(".gz"))
    return {"wall": wall, "spent": spent, "packets": res.packets, "records": res.records,
            "entries": log.seq, "bytes": plain, "gz_bytes": gz, "fsyncs": fsync.calls,
            "errors": log.write_errors}


def gzip_ratio(directory: Path) -> float:
    """How small gzip makes a segment (what rotated segments occupy on disk)."""
    seg = next(p for p in list_segments(directory) if not p.name.endswith(".gz"))
    data = seg.read_bytes()
    return len(gzip.compress(data, 6)) / max(1, len(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--packets", type=int, default=1_000_000,
                    help="packets to generate if the capture is missing")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the audit logs go (default: a temporary directory)")
    args = ap.parse_args()
    capture = ensure_capture(args.capture, args.packets)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-audit-"))
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; capture {capture} "
          f"({capture.stat().st_size / 1e6:.0f} MB)")
    print("warm-up (page cache, geolocation data) ...", flush=True)
    run_null(capture)
    nulls: list[float] = []
    audits: list[dict[str, float]] = []
    defaults: list[dict[str, float]] = []
    for i in range(args.runs):
        seconds, packets, records = run_null(capture)
        nulls.append(seconds)
        audit = run_audit(capture, work / "audit")
        audits.append(audit)
        defaults.append(run_audit(capture, work / "audit-verdicts", all_flows=False))
        print(f"round {i + 1}: null sink {seconds:.2f} s, audit all {audit['wall']:.2f} s "
              f"(audit calls {audit['spent']:.2f} s), verdicts only "
              f"{defaults[-1]['wall']:.2f} s; {packets:,} packets, {records:,} records",
              flush=True)
    ratios = [a["wall"] / n for a, n in zip(audits, nulls, strict=True)]
    shares = [a["spent"] / a["wall"] for a in audits]
    last = audits[-1]
    ratio = gzip_ratio(work / "audit")
    per_entry = last["bytes"] / max(1, last["entries"])
    print()
    print(f"replay, null sink   median {statistics.median(nulls):.2f} s  "
          f"{last['packets'] / statistics.median(nulls):,.0f} packets/s")
    print(f"replay, audit all   median {statistics.median(a['wall'] for a in audits):.2f} s  "
          f"{last['packets'] / statistics.median(a['wall'] for a in audits):,.0f} packets/s")
    print(f"overhead (median of paired wall-time ratios): "
          f"{(statistics.median(ratios) - 1) * 100:+.1f} %  (target < 5 %)")
    print(f"audit calls' share of the audit replay:        "
          f"{statistics.median(shares) * 100:.1f} %  "
          f"({statistics.median(a['spent'] for a in audits) / last['records'] * 1e6:.1f} us "
          f"per record)")
    verdict_ratios = [d["wall"] / n for d, n in zip(defaults, nulls, strict=True)]
    print(f"verdicts only (the daemon's default): {defaults[-1]['entries']:,} entries, "
          f"overhead {(statistics.median(verdict_ratios) - 1) * 100:+.1f} %, audit calls "
          f"{statistics.median(d['spent'] / d['wall'] for d in defaults) * 100:.1f} %")
    print(f"entries {last['entries']:,} for {last['records']:,} records; "
          f"{per_entry:.0f} bytes per entry plain, ~{per_entry * ratio:.0f} gzip'd "
          f"(ratio {ratio:.2f}); {last['fsyncs']} fsync calls; {last['errors']} write errors")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
