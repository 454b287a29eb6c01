#!/usr/bin/env python3
"""The highest rate the daemon captures with zero kernel drops, per capture setup (run as root).

``residency-monitor run`` captures one end of a veth pair in its own network
namespace (as tests/test_daemon_e2e.py), with the Macau policy, live verdicts,
records and the audit log, while tcpreplay sends the office-gateway bench
capture (looped, so the 64 MB rings cannot absorb a shortfall) from the other
end. Four setups:

- ``socket``: one process, recvmsg per frame (``capture.read_path: socket``);
- ``ring``: one process, the TPACKET_V3 ring (the default);
- ``ring x2``: ``capture.workers: 2`` (PACKET_FANOUT); the workers and
  tcpreplay share the 2 cores;
- ``handshake``: one process, ring, ``capture.mode: handshake``.

Single-process setups are pinned to CPU 1, tcpreplay to CPU 0. A rate is
lossless when the kernel counted no drop (``residency_packets_dropped_total``)
and, in full mode, every packet sent was captured. Rates are bisected between
``--min-rate`` and ``--max-rate``; tcpreplay's ``--topspeed`` is tried first.
Prints packets/s and the equivalent link speed at the bench capture's mean
frame size, and whether issue 8's targets are met. Asserts nothing.

    python3 benchmarks/bench_scale.py [--packets 100000] [--loops 5] [--setups ring socket]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_live import make_capture  # noqa: E402
from daemon_fixture import DaemonProcess, scrape_samples  # noqa: E402
from netns_fixture import NetnsPair, netns_pair  # noqa: E402

from residency_monitor.capture.files import open_capture  # noqa: E402

SEND_CPU, CAPTURE_CPU = 0, 1
SETUPS = {
    "socket": ["  read_path: socket"],
    "ring": [],
    "ring x2": ["  workers: 2"],
    "handshake": ["  mode: handshake"],
}



def trial(pair: NetnsPair, pcap: Path, setup: str, rate: int | None, loops: int,
          workdir: Path) -> tuple[bool, float, int, int, int]:
    """One daemon, one replay: (lossless, achieved pps, sent, captured, dropped)."""
    config = ["capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
              *SETUPS[setup], f"audit: {{path: {workdir / 'audit'}}}"]
    daemon = DaemonProcess(workdir, config, name=setup)
    daemon.start()
    try:
        if setup != "ring x2":
            assert daemon.proc is not None
            os.sched_setaffinity(daemon.proc.pid, {CAPTURE_CPU})
        rep = pair.replay(pcap, pps=rate, topspeed=rate is None, loops=loops, cpu=SEND_CPU)
        cap_key = f'residency_packets_captured_total{{interface="{pair.dev_b}"}}'
        drop_key = f'residency_packets_dropped_total{{interface="{pair.dev_b}"}}'
        deadline, last = time.monotonic() + 60, None
        while True:   # until the engines have caught up with what the kernel captured
            m = scrape_samples(daemon.port)
            state = (m.get(cap_key, 0), m.get(drop_key, 0),
                     m.get("residency_packets_processed_total", 0))
            if (state == last and state[2] >= state[0] - state[1]) \
                    or time.monotonic() > deadline:
                break
            last = state
            time.sleep(0.6)
    finally:
        daemon.stop(60)
        daemon.kill()
    captured, dropped = int(state[0]), int(state[1])
    ok = dropped == 0 and (setup == "handshake" or captured == rep.sent)
    return ok, rep.pps, rep.sent, captured, dropped


def search(pair: NetnsPair, pcap: Path, setup: str, args: argparse.Namespace,
           workdir: Path) -> tuple[int, float]:
    """Highest lossless rate (requested, achieved); 0 if even --min-rate lost packets."""
    n = 0

    def run(rate: int | None) -> tuple[bool, float]:
        nonlocal n
        n += 1
        ok, pps, sent, captured, dropped = trial(pair, pcap, setup, rate, args.loops,
                                                 workdir / f"{setup.replace(' ', '')}-{n}")
        label = "topspeed" if rate is None else f"{rate:,}"
        print(f"  {setup:9} --pps {label:>9}: achieved {pps:>9,.0f} pps, sent {sent:,}, "
              f"captured {captured:,}, dropped {dropped:,} -> "
              f"{'lossless' if ok else 'LOSS'}", flush=True)
        return ok, pps

    ok, pps = run(None)
    if ok:
        return -1, pps
    lo, hi, best = args.min_rate, min(args.max_rate, int(pps)), (0, 0.0)
    while hi - lo >= args.resolution:
        mid = (lo + hi) // 2 // 1000 * 1000
        ok, achieved = run(mid)
        if ok:
            best, lo = (mid, achieved), mid
        else:
            hi = mid
    if best[0] == 0:
        ok, achieved = run(lo)
        if ok:
            best = (lo, achieved)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--loops", type=int, default=5)
    ap.add_argument("--min-rate", type=int, default=50_000)
    ap.add_argument("--max-rate", type=int, default=1_500_000)
    ap.add_argument("--resolution", type=int, default=25_000)
    ap.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, netns_pair() as pair:
        workdir = Path(tmp)
        pcap = make_capture(args.packets, workdir)
        with open_capture(pcap) as reader:
            sizes = [f[3] for f in reader]
        mean = sum(sizes) / len(sizes)
        print(f"bench capture: {len(sizes):,} frames x {args.loops} loops, mean frame "
              f"{mean:.1f} bytes; CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
        results = {}
        for setup in args.setups:
            results[setup] = search(pair, pcap, setup, args, workdir)
        print("\nhighest rate with zero kernel drops (the daemon: capture, engine, verdicts, "
              "records, audit):")
        print(f"  {'setup':10} {'requested':>12} {'achieved pps':>13} {'Mbit/s':>8}")
        achieved = {}
        for setup, (rate, pps) in results.items():
            shown = "topspeed" if rate < 0 else f"{rate:,}"
            achieved[setup] = pps
            print(f"  {setup:10} {shown:>12} {pps:>13,.0f} {pps * mean * 8 / 1e6:>8,.0f}")
        print("  (Mbit/s = pps x mean frame bytes x 8; preamble and inter-frame gap not counted)")
        if "socket" in achieved and "ring" in achieved and achieved["socket"]:
            ratio = achieved["ring"] / achieved["socket"]
            print(f"target ring >= 1.5 x socket: {ratio:.2f}x -> "
                  f"{'met' if ratio >= 1.5 else 'NOT met'}")
        if "handshake" in results:
            top = results["handshake"][0] < 0
            print(f"target handshake mode lossless at tcpreplay's top speed: "
                  f"{'met' if top else 'NOT met'}")


if __name__ == "__main__":
    main()
