#!/usr/bin/env python3
"""Replay throughput, memory and correctness of ``residency-monitor`` on the bench capture.

What it prints, and why:

* **Speed as ratios to anchors, measured in the same run.** Absolute figures on a
  shared 2-core VM drift by tens of percent from one minute to the next, so the
  monitor's replay is timed side by side with ``tcpdump -r … -w /dev/null`` (the
  C floor), the pure-Python anchors of ``../shared/bench`` (``baseline_struct.py``,
  the ceiling for per-packet Python work; ``baseline_dpkt.py``; scapy's
  ``RawPcapReader``) and tshark extracting the same TLS fields. Every program runs
  once untimed (warm page cache, compiled bytecode), then the programs run
  round-robin (A B C … A B C …) ``--runs`` times as whole processes; the wall
  time includes interpreter start-up, as a user sees it. Ratios are the median of
  the per-round paired ratios, which cancels drift that affects a whole round.
* **Peak memory** of each timed process, measured by GNU ``time`` (``%M``) run
  around it, so the figure is that process's own (see :func:`run_once` for why
  neither ``RUSAGE_CHILDREN`` nor ``wait4`` from here would do).
* **Memory per tracked flow** at 1,000,000 concurrent flows, IPv4 and IPv6
  apart: synthetic TCP SYNs (one per flow, to one server on port 443, so every
  flow also carries its handshake inspector) are generated lazily and fed to a
  bare :class:`~residency_monitor.engine.Engine` without ``finish()``. Each
  measurement runs in a fresh interpreter (this script re-invoked with a hidden
  option), once for the RSS delta and once under tracemalloc, so neither the
  other measurement nor earlier allocations blur it. Alongside: the rate of
  flow creation and how much of it the cyclic GC takes (every flow adds several
  GC-tracked objects), the cost of one timeout sweep of the full table, and the
  allocation sites per flow (from a 100k-flow fill; a tracemalloc snapshot of a
  million flows would take gigabytes).
* **Correctness**: the capture replayed in-process, every record compared with
  the generator's ground truth (packets and IP bytes per direction). A flow that
  the monitor legitimately splits (a UDP gap longer than the idle timeout, as
  Zeek's ``udp_inactivity_timeout`` does) is shown as such, not hidden.
* **The previous figure**: ``--previous REV`` (default: the last commit before
  QUIC decryption, DNS names and plaintext inspection were added) exports that
  revision's package with ``git archive`` and times its replay in the same
  rounds, so "within 10% of the previous figure" is a ratio measured side by
  side, not a comparison with a number from another day. ``--previous ''``
  skips it.
* ``--profile``: cProfile of the CLI replay on the 100k-packet prefix, top
  functions by own time.

Usage, from the project root::

    python3 benchmarks/bench_replay.py [--packets 1000000] [--workdir DIR] [--runs 3]
                                       [--skip-tshark] [--profile]

The capture is generated with ``../shared/bench/make_bench_pcap.py --seed 1``
into the work directory (default ``bench-data/``, git-ignored) unless a file of
the right size with a matching truth file is already there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BENCH = SHARED / "bench"
GENERATOR = BENCH / "make_bench_pcap.py"
SEED = 1

#: Targets from the performance issue: replay speed relative to the anchors
#: (speed ratio = replay packets/s over the other program's packets/s).
SPEED_TARGETS = {"baseline_struct.py": 0.5, "baseline_dpkt.py": 5.0, "tshark TLS fields": 10.0}
#: Target for the flow table: bytes per tracked flow at 1M concurrent flows.
FLOW_BYTES_TARGET = 400
FLOW_COUNT = 1_000_000

PCAP_GLOBAL_HEADER = 24
PCAP_RECORD_HEADER = 16

PROFILE_PACKETS = 100_000  # the prefix profiled with --profile

REPLAY_CODE = "from residency_monitor.cli import main; main()"
#: the last commit before issue 5's inspection (QUIC decryption, DNS names, plaintext, ECH)
PREVIOUS_REV = "846db7f"
PREVIOUS_BUDGET = 1.10   # issue 5: replay stays within 10% of its previous figure


# -- the capture ---------------------------------------------------------------

def truth_path(pcap: Path) -> Path:
    return pcap.with_name(pcap.name + ".truth.json")


def current_truth(pcap: Path, packets: int) -> dict | None:
    """The truth of ``pcap`` if it and its truth file are the generator's output for
    ``packets`` packets, seed 1 (pcap size = headers + the truth's frame bytes); else None."""
    if not (pcap.is_file() and truth_path(pcap).is_file()):
        return None
    try:
        truth = load_truth(pcap)
        meta, totals = truth["meta"], truth["totals"]
        expected = PCAP_GLOBAL_HEADER + PCAP_RECORD_HEADER * packets + totals["frame_bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (meta.get("packets"), meta.get("seed"), meta.get("format")) != (packets, SEED, "pcap"):
        return None
    return truth if pcap.stat().st_size == expected else None


def ensure_capture(workdir: Path, packets: int, name: str) -> tuple[Path, dict]:
    """Generate ``workdir/name`` and its truth file unless identical ones are there."""
    pcap = workdir / name
    truth = current_truth(pcap, packets)
    if truth is not None:
        print(f"capture: {pcap} (already there, {pcap.stat().st_size:,} bytes)")
        return pcap, truth
    if not GENERATOR.is_file():
        sys.exit(f"bench generator not found at {GENERATOR} (../shared sits beside the checkout)")
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"capture: generating {pcap} ({packets:,} packets) ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(GENERATOR), "--packets", str(packets), "--seed", str(SEED),
                    "--out", str(pcap)], check=True)
    print(f"capture: generated in {time.perf_counter() - t0:.1f} s")
    truth = current_truth(pcap, packets)
    if truth is None:
        sys.exit(f"{pcap}: the generated file does not match its truth file")
    return pcap, truth


def load_truth(pcap: Path) -> dict:
    with truth_path(pcap).open() as fh:
        return json.load(fh)


# -- the machine -----------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def print_machine() -> None:
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs); load average {load_average()}")
    print(f"python: {platform.python_implementation()} {platform.python_version()} "
          f"({sys.executable})")


# -- timing whole processes ----------------------------------------------------------

@dataclass
class Program:
    """One command timed as a whole process."""

    name: str
    argv: list[str]
    what: str
    walls: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


GNU_TIME = "/usr/bin/time"


def run_once(argv: Sequence[str], cwd: Path) -> tuple[float, int]:
    """Run ``argv`` to completion; return (wall seconds, its peak RSS in KiB).

    The peak RSS comes from GNU time (``%M``) when it is installed: a child
    forked from this benchmark inherits its RSS high-water mark across exec on
    Linux, so ``os.wait4`` on it would report at least this process's own
    size; forked from the small ``time`` process, the figure is the program's.
    Without GNU time, ``os.wait4`` is the (over-estimating) fallback.
    stdout goes to /dev/null; stderr to a temporary file shown only on failure.
    """
    use_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryFile() as err, open(os.devnull, "wb") as out, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        cmd = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *argv] if use_time else list(argv)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{argv[0]} … exited with {code}:\n{tail}")
        rss_kib = int(rss_file.read().split()[-1]) if use_time else usage.ru_maxrss
    return wall, rss_kib


def export_revision(rev: str, into: Path) -> Path | None:
    """The package as it was at ``rev`` (git archive), or None if git cannot give it."""
    dest = into / f"previous-{rev}"
    if (dest / "residency_monitor" / "cli.py").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "residency_monitor"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(dest, ignore_errors=True)
        return None
    return dest


def build_programs(pcap: Path, skip_tshark: bool, previous: str = "",
                   workdir: Path | None = None) -> tuple[list[Program], list[str]]:
    """The timed programs (replay first, tcpdump second) and notes on any skipped."""
    py = sys.executable
    f = str(pcap)
    notes: list[str] = []
    progs = [Program("residency-monitor replay", [py, "-c", REPLAY_CODE, "replay", "-q", "-o",
                                                  os.devnull, f],
                     "flows + TLS inspection + JSON records")]
    if previous:
        old = export_revision(previous, workdir or pcap.parent)
        if old is None:
            notes.append(f"revision {previous} not available from git: no previous figure")
        else:
            # run from the exported tree: "-c" puts the working directory first on sys.path
            progs.append(Program(f"replay @ {previous}",
                                 [py, "-c", f"import os; os.chdir({str(old)!r}); "
                                  + REPLAY_CODE, "replay", "-q", "-o", os.devnull, f],
                                 "the same, before issue 5's inspection"))
    tcpdump = shutil.which("tcpdump")
    if tcpdump:
        progs.append(Program("tcpdump -r -w /dev/null", [tcpdump, "-r", f, "-w", os.devnull],
                             "libpcap read + write"))
    else:
        notes.append("tcpdump not found: no floor, ratios to tcpdump are n/a")
    for script, what in (("baseline_struct.py", "struct 5-tuple loop + dict of flows"),
                         ("baseline_dpkt.py", "dpkt Reader + Ethernet/IP/L4 objects"),
                         ("baseline_scapy_raw.py", "scapy RawPcapReader, no decode")):
        path = BENCH / script
        if path.is_file():
            progs.append(Program(script, [py, str(path), f], what))
        else:
            notes.append(f"{script} not found in {BENCH}: skipped")
    tshark = shutil.which("tshark")
    if skip_tshark:
        notes.append("tshark skipped (--skip-tshark)")
    elif not tshark:
        notes.append("tshark not found: skipped")
    else:
        progs.append(Program("tshark TLS fields",
                             [tshark, "-r", f, "-T", "fields",
                              "-e", "tls.handshake.extensions_server_name",
                              "-e", "tls.handshake.type", "-Y", "tls.handshake"],
                             "dissect + reassemble + QUIC decrypt"))
    progs.append(Program("(python + import cli only)", [py, "-c", "import residency_monitor.cli"],
                         "start-up part of the replay row"))
    return progs, notes


def time_programs(progs: list[Program], runs: int, cwd: Path) -> None:
    """One untimed warm-up of each, then ``runs`` round-robin rounds."""
    print(f"timing: warm-up, then {runs} interleaved rounds of {len(progs)} programs ...",
          flush=True)
    for p in progs:
        run_once(p.argv, cwd)
    for r in range(runs):
        t0 = time.perf_counter()
        for p in progs:
            wall, rss = run_once(p.argv, cwd)
            p.walls.append(wall)
            p.rss_kib.append(rss)
        print(f"  round {r + 1}/{runs}: {time.perf_counter() - t0:.1f} s, "
              f"load average {load_average()}", flush=True)


def paired_ratio(num: Program, den: Program) -> float:
    """Median over rounds of num's wall / den's wall in the same round."""
    return statistics.median(a / b for a, b in zip(num.walls, den.walls, strict=True))


def print_timing(progs: list[Program], packets: int, frame_bytes: int, notes: list[str]) -> None:
    by_name = {p.name: p for p in progs}
    floor = next((p for p in progs if p.name.startswith("tcpdump")), None)
    replay = progs[0]
    print()
    print(f"{'program':<28} {'median s':>9} {'min-max s':>13} {'pkts/s':>11} {'Mbit/s':>8} "
          f"{'x tcpdump':>9} {'max RSS MB':>10}  what")
    for p in progs:
        startup = p.name.startswith("(")
        pps = "" if startup else f"{packets / p.median:,.0f}"
        mbit = "" if startup else f"{frame_bytes * 8 / p.median / 1e6:,.0f}"
        ratio = f"{paired_ratio(p, floor):.2f}" if floor and not startup else ""
        spread = f"{min(p.walls):.3f}-{max(p.walls):.3f}"
        print(f"{p.name:<28} {p.median:>9.3f} {spread:>13} {pps:>11} {mbit:>8} {ratio:>9} "
              f"{max(p.rss_kib) / 1024:>10.1f}  {p.what}")
    for n in notes:
        print(f"note: {n}")
    print()
    print("replay speed relative to the anchors (replay pkts/s / other pkts/s, "
          "median of per-round pairs):")
    for name in ("baseline_struct.py", "baseline_dpkt.py", "baseline_scapy_raw.py",
                 "tshark TLS fields", "tcpdump -r -w /dev/null"):
        other = by_name.get(name)
        if other is None:
            print(f"  replay / {name:<24} n/a (not run)")
            continue
        speed = paired_ratio(other, replay)
        target = SPEED_TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"   target >= {target:g}x: {'met' if speed >= target else 'NOT met'}"
        print(f"  replay / {name:<24} {speed:6.2f}x{verdict}")
    previous = next((p for p in progs if p.name.startswith("replay @")), None)
    if previous is not None:
        slower = paired_ratio(replay, previous)
        print(f"  replay now / {previous.name:<20} {slower:6.2f}x the time "
              f"({replay.median:.3f} s now, {previous.median:.3f} s then)   budget <= "
              f"{PREVIOUS_BUDGET:g}x: {'met' if slower <= PREVIOUS_BUDGET else 'NOT met'}")
    print(f"replay peak RSS (whole process, max of {len(replay.rss_kib)} runs): "
          f"{max(replay.rss_kib) / 1024:.1f} MB")


# -- memory per tracked flow ------------------------------------------------------------

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_MACS = (b"\x02\x00\x00\x00\x00\x02", b"\x02\x00\x00\x00\x00\x01")
SERVER_V4 = bytes((93, 184, 216, 34))
SERVER_V6 = bytes.fromhex("2606280000000000000000000000abcd")
CLIENT_V6_PREFIX = bytes.fromhex("fd000001000200100000")  # fd00:1:2:10::/64, 10 bytes
PORTS_PER_CLIENT = 50_000


def syn_frames(n: int, ip_version: int, t0: float = 1_710_234_000.0) -> Iterator[
        tuple[float, int, bytes, int]]:
    """``n`` distinct client->server:443 TCP SYNs as Ethernet frames, built one at a time.

    Clients are consecutive addresses, each using ``PORTS_PER_CLIENT`` source ports
    (as behind a NAT); packets are 1 us apart, so no timeout or sweep expires any.
    """
    eth = _ETH.pack(*_MACS, 0x0800 if ip_version == 4 else 0x86DD)
    for i in range(n):
        client, port = divmod(i, PORTS_PER_CLIENT)
        tcp = _TCP.pack(1024 + port, 443, i, 0, 0x50, 0x02, 64240, 0, 0)
        if ip_version == 4:
            src = bytes((10, 64 + (client >> 16 & 0x3F), client >> 8 & 0xFF, client & 0xFF))
            ip = _IPV4.pack(0x45, 0, 40, i & 0xFFFF, 0x4000, 64, 6, 0, src, SERVER_V4)
        else:
            src = CLIENT_V6_PREFIX + client.to_bytes(6, "big")
            ip = _IPV6.pack(0x60000000, 20, 6, 64, src, SERVER_V6)
        frame = eth + ip + tcp
        yield t0 + i * 1e-6, 1, frame, len(frame)


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


SITES_FLOWS = 100_000  # flows of the (smaller) run whose allocation sites are listed


def fill_engine(n: int, ip_version: int):
    """A default engine (table bound raised to 2n) holding ``n`` open flows."""
    from residency_monitor.engine import Engine, EngineConfig
    from residency_monitor.flows import FlowConfig

    engine = Engine(EngineConfig(flows=FlowConfig(max_flows=2 * n)))
    engine.run(syn_frames(n, ip_version))
    return engine


def allocation_sites(n: int, ip_version: int, top: int = 12) -> list[str]:
    """Where a fill of ``n`` flows allocates, per flow, largest first (tracemalloc snapshot).

    Run on fewer flows than the total: a snapshot copies every live trace, which
    at a million flows (~6M blocks) would take gigabytes.
    """
    import linecache
    import tracemalloc

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    engine = fill_engine(n, ip_version)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    sites = []
    for stat in after.compare_to(before, "lineno")[:top]:
        fr = stat.traceback[0]
        code = linecache.getline(fr.filename, fr.lineno).strip()
        sites.append(f"{stat.size_diff / n:5.0f} B  {Path(fr.filename).name}:{fr.lineno}  {code}")
    del engine
    return sites


def flow_memory_worker(ip_version: int, use_tracemalloc: bool, n: int) -> dict:
    """Fill an engine with ``n`` flows and measure it (in a fresh interpreter, see
    :func:`measure_flow_memory`): RSS delta and timings, or tracemalloc figures."""
    import gc
    import tracemalloc

    gc_pause = [0.0, 0]  # seconds in cyclic GC, full (generation 2) collections

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_pause.append(time.perf_counter())
        else:
            gc_pause[0] += time.perf_counter() - gc_pause.pop()
            gc_pause[1] += info["generation"] == 2

    gc.collect()
    out: dict = {"ip_version": ip_version}
    if use_tracemalloc:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        engine = fill_engine(n, ip_version)
        gc.collect()
        out["bytes"] = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        out["count"], out["evicted"] = engine.table.count, engine.table.stats["flows_evicted"]
        del engine
        gc.collect()
        out["sites_n"] = min(n, SITES_FLOWS)
        out["sites"] = allocation_sites(out["sites_n"], ip_version)
        return out
    base = rss_bytes()
    gc.callbacks.append(on_gc)
    t0 = time.perf_counter()
    engine = fill_engine(n, ip_version)
    out["fill_s"] = time.perf_counter() - t0
    gc.callbacks.remove(on_gc)
    gc.collect()
    out["bytes"] = rss_bytes() - base
    out["gc_s"], out["gc_full"] = gc_pause[0], gc_pause[1]
    out["count"], out["evicted"] = engine.table.count, engine.table.stats["flows_evicted"]
    t0 = time.perf_counter()
    engine.table.sweep(engine.table.next_sweep)  # what every sweep_interval costs at this size
    out["sweep_s"] = time.perf_counter() - t0
    return out


def measure_flow_memory(ip_version: int, use_tracemalloc: bool, n: int) -> dict:
    """Run :func:`flow_memory_worker` in a fresh interpreter and return its result."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--flow-memory-worker",
            str(ip_version), "--flows", str(n)]
    if use_tracemalloc:
        argv.append("--tracemalloc")
    out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_flow_memory(n: int) -> None:
    print()
    print(f"memory per tracked flow: {n:,} concurrent TCP flows (one SYN each to :443, as a SYN "
          f"flood makes them), no finish(); target <= {FLOW_BYTES_TARGET} B/flow", flush=True)
    for version in (4, 6):
        rss = measure_flow_memory(version, False, n)
        traced = measure_flow_memory(version, True, n)
        per_traced = traced["bytes"] / n
        per_rss = rss["bytes"] / n
        ok = all(r["count"] == n and not r["evicted"] for r in (rss, traced))
        verdict = "met" if per_traced <= FLOW_BYTES_TARGET else "NOT met"
        print(f"  IPv{version}: tracemalloc {per_traced:6.0f} B/flow, "
              f"RSS delta {per_rss:6.0f} B/flow   target: {verdict}; "
              f"engine.table.count == {n:,}: {'yes' if ok else 'NO'} "
              f"({rss['count']:,}, evicted {rss['evicted']:,})")
        print(f"        fill: {n / rss['fill_s']:,.0f} new flows/s ({rss['fill_s']:.1f} s, "
              f"of which cyclic GC {rss['gc_s']:.1f} s in {rss['gc_full']} full collections); "
              f"one sweep of the full table: {rss['sweep_s'] * 1e3:.0f} ms")
        print(f"        allocation sites per flow (tracemalloc, {traced['sites_n']:,}-flow fill):")
        for site in traced["sites"]:
            print(f"          {site}")


# -- correctness against the truth file ----------------------------------------------------

Key = tuple


def truth_key(f: dict) -> Key:
    """As ``tests/test_bench_truth.py``: ICMP echo by id, else the 5-tuple, client first."""
    if f["proto"] == "icmp":
        return ("icmp", f["client_ip"], 0, f["server_ip"], 0, f["icmp_id"])
    return (f["proto"], f["client_ip"], f["client_port"], f["server_ip"], f["server_port"], None)


def record_key(r) -> Key:
    if r.transport in ("icmp", "icmp6"):
        return ("icmp", r.client_ip, 0, r.server_ip, 0, r.icmp_id)
    return (r.transport, r.client_ip, r.client_port, r.server_ip, r.server_port, None)


def counters(recs: list) -> tuple[int, int, int, int]:
    return (sum(r.packets_out for r in recs), sum(r.packets_in for r in recs),
            sum(r.bytes_out for r in recs), sum(r.bytes_in for r in recs))


def fmt_key(k: Key) -> str:
    proto, cip, cport, sip, sport, icmp_id = k
    if icmp_id is not None:
        return f"{proto} {cip} -> {sip} id {icmp_id}"
    return f"{proto} {cip}:{cport} -> {sip}:{sport}"


def check_correctness(pcap: Path, truth: dict) -> None:
    """Replay in-process and compare every final record with the ground truth."""
    from residency_monitor.engine import EngineConfig
    from residency_monitor.replay import replay

    config = EngineConfig()
    records: list = []
    t0 = time.perf_counter()
    res = replay([pcap], records.append, config)
    wall = time.perf_counter() - t0
    finals = [r for r in records if r.final]
    ours: dict[Key, list] = defaultdict(list)
    for r in finals:
        ours[record_key(r)].append(r)

    exact = exact_all = 0
    mismatches: list[str] = []
    splits: list[str] = []
    for f in truth["flows"]:
        k = truth_key(f)
        recs = sorted(ours.pop(k, []), key=lambda r: r.ts_start)
        want = (f["c2s_packets"], f["s2c_packets"], f["c2s_ip_bytes"], f["s2c_ip_bytes"])
        if not recs:
            mismatches.append(f"{fmt_key(k)}: no record (missing, or client/server swapped)")
            continue
        got = counters(recs)
        if len(recs) > 1:
            gap = max(b.ts_start - a.ts_end for a, b in zip(recs, recs[1:], strict=False))
            why = f" > udp_idle {config.flows.udp_idle:g} s" if k[0] == "udp" else ""
            same = "match" if got == want else "DIFFER from"
            splits.append(f"{fmt_key(k)} ({f['app']}): {len(recs)} records, end reasons "
                          f"{'/'.join(r.end_reason for r in recs)}, gap {gap:.1f} s{why}; "
                          f"summed counters {same} the truth")
            continue
        if got != want:
            mismatches.append(f"{fmt_key(k)}: got pk/pk/B/B {got}, truth {want}")
            continue
        exact += 1
        r = recs[0]
        if (r.vlan, round(r.ts_start * 1e6), round(r.ts_end * 1e6)) == (
                f["vlan"], f["first_ts_us"], f["last_ts_us"]):
            exact_all += 1
    extra = [fmt_key(k) for k in ours]

    totals = truth["totals"]
    n_truth = len(truth["flows"])
    print()
    print(f"correctness (in-process replay, default EngineConfig, {wall:.2f} s = "
          f"{res.packets / wall:,.0f} pkts/s without start-up and output):")
    print(f"  packets {res.packets:,} (truth {totals['packets']:,}); decode errors "
          f"{res.decode_errors or 'none'}; warnings {len(res.warnings)}; "
          f"IP bytes in records {sum(counters(finals)[2:]):,} (truth {totals['ip_bytes']:,})")
    print(f"  truth flows {n_truth:,}; final records {len(finals):,}; interim records "
          f"{len(records) - len(finals):,}")
    print(f"  flows whose packets and IP bytes per direction match exactly: {exact:,} / {n_truth:,}"
          f" (of which VLAN and first/last timestamp also match: {exact_all:,})")
    print(f"  flows split into several records: {len(splits)}")
    for s in splits[:5]:
        print(f"    {s}")
    print(f"  mismatched or missing flows: {len(mismatches)}")
    for m in mismatches[:5]:
        print(f"    {m}")
    print(f"  records with no flow in the truth: {len(extra)}")
    for e in extra[:5]:
        print(f"    {e}")


# -- profile ----------------------------------------------------------------------------------

def profile_replay(pcap: Path, top: int = 15) -> None:
    """cProfile of the CLI replay (JSON records to /dev/null), in-process."""
    import cProfile
    import pstats

    from residency_monitor.cli import main

    prof = cProfile.Profile()
    prof.enable()
    with contextlib.suppress(SystemExit):  # the command ends with sys.exit(exit code)
        main(["replay", "-q", "-o", os.devnull, str(pcap)], standalone_mode=False)
    prof.disable()
    print()
    print(f"profile: CLI replay of {pcap.name}, top {top} functions by own time (cProfile "
          f"adds overhead per call, so call-heavy functions are over-weighted)")
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)


# -- main -------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="packets in the bench capture")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench-data",
                    help="where the capture is generated and kept (default: bench-data/)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per program (median)")
    ap.add_argument("--skip-tshark", action="store_true", help="do not time tshark (~25 s a run)")
    ap.add_argument("--flows", type=int, default=FLOW_COUNT,
                    help="concurrent flows for the memory-per-flow measurement")
    ap.add_argument("--previous", default=PREVIOUS_REV, metavar="REV",
                    help="also time replay as of this git revision ('' to skip)")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile the replay of the 100k-packet prefix")
    ap.add_argument("--flow-memory-worker", type=int, choices=(4, 6), help=argparse.SUPPRESS)
    ap.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.flow_memory_worker:
        print(json.dumps(flow_memory_worker(args.flow_memory_worker, args.tracemalloc, args.flows)))
        return
    if args.runs < 1:
        sys.exit("--runs must be at least 1")
    args.workdir = args.workdir.resolve()  # before the chdir: relative to where it was typed
    os.chdir(ROOT)
    print_machine()
    for tool in ("tcpdump", "tshark"):
        if shutil.which(tool):
            print(f"{tool}: {tool_version([tool, '--version'])}")
    # a quick look at another size must not replace the 1M-packet file others reuse
    name = "bench.pcap" if args.packets == 1_000_000 else f"bench{args.packets}.pcap"
    pcap, truth = ensure_capture(args.workdir, args.packets, name)
    packets, frame_bytes = truth["totals"]["packets"], truth["totals"]["frame_bytes"]

    progs, notes = build_programs(pcap, args.skip_tshark, args.previous, args.workdir)
    time_programs(progs, args.runs, ROOT)
    print_timing(progs, packets, frame_bytes, notes)
    print_flow_memory(args.flows)
    check_correctness(pcap, truth)
    if args.profile:
        prefix = pcap
        if args.packets > PROFILE_PACKETS:
            prefix, _ = ensure_capture(args.workdir, PROFILE_PACKETS, "bench100k.pcap")
        profile_replay(prefix)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
