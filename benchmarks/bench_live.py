#!/usr/bin/env python3
"""Live capture speed on a veth pair between two network namespaces (run as root).

Two figures, both from the office-gateway bench capture replayed with
tcpreplay in namespace A and captured by :class:`LiveCapture` in namespace B
(a worker started with ``ip netns exec``, as the daemon runs; tcpreplay and
the veth softirq pinned to CPU 0, the worker to CPU 1):

1. Per-frame read cost of each read path: the worker opens its socket and
   reads nothing while ``--cost-packets`` frames are replayed into the
   kernel's buffer, then drains them; the time spent in ``read()`` divided
   by the frames is what timestamps, VLAN tags and tuples cost per frame
   (``ring``: TPACKET_V3 ring; ``socket``: recvmsg with SO_TIMESTAMPNS).
2. The highest ``tcpreplay --pps`` rate at which the first ``--packets``
   packets are captured and decoded by the Engine with zero kernel drops.
   Rates are tried from ``--max-rate`` down in ``--step`` steps, ``--runs``
   times each; a rate counts as lossless when every run was.

    python3 benchmarks/bench_live.py [--packets 200000] [--max-rate 500000] [--step 50000]

Prints figures; asserts nothing (tests/test_live_capture.py checks correctness).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT.parent / "shared" / "bench" / "make_bench_pcap.py"
sys.path.insert(0, str(ROOT / "tests"))

from netns_fixture import NetnsPair, netns_pair, write_pcap  # noqa: E402

from residency_monitor.capture.files import open_capture  # noqa: E402

SEND_CPU, CAPTURE_CPU = 0, 1


def make_capture(packets: int, workdir: Path) -> Path:
    """The bench capture's first ``packets``, destination MACs made foreign (see netns_fixture)."""
    raw = workdir / "raw.pcap"
    subprocess.run([sys.executable, str(GENERATOR), "--packets", str(packets), "--seed", "1",
                    "--out", str(raw)], check=True, capture_output=True)
    out = workdir / "bench.pcap"
    with open_capture(raw) as reader:
        write_pcap(out, reader)
    raw.unlink()
    return out


def read_cost(pair: NetnsPair, pcap: Path, mode: str, packets: int) -> float:
    """Microseconds per frame spent in read() draining frames already queued in the kernel."""
    with pair.capture(bpf=None, ring=mode == "ring", hold=True, pcap=False,
                      cpu=CAPTURE_CPU) as cap:
        pair.replay(pcap, topspeed=True, limit=packets, cpu=SEND_CPU)
    res = cap.result
    if res["stats"]["vb"][1]:
        print(f"  warning: {mode}: {res['stats']['vb'][1]} drops while holding")
    return res["read_seconds"] / res["frames"] * 1e6


def lossless_run(pair: NetnsPair, pcap: Path, rate: int, loops: int = 1,
                 ring: bool = True) -> tuple[int, float, float]:
    """One replay at ``rate`` captured with the Engine: (drops, achieved pps, worker CPU s)."""
    with pair.capture(engine=True, pcap=False, ring=ring, cpu=CAPTURE_CPU) as cap:
        rep = pair.replay(pcap, pps=rate, loops=loops, cpu=SEND_CPU)
    res = cap.result
    return res["stats"]["vb"][1], rep.pps, res["cpu_seconds"] / max(1, res["engine_packets"])


def search(pair: NetnsPair, pcap: Path, args: argparse.Namespace, loops: int) -> None:
    print(f"\nlossless rate, {args.packets * loops} packets ({loops} x {args.packets}), "
          f"{args.mode} read path, capture + Engine in the receiving namespace:")
    for rate in range(args.max_rate, args.min_rate - 1, -args.step):
        runs = [lossless_run(pair, pcap, rate, loops, args.mode == "ring")
                for _ in range(args.runs)]
        drops = [r[0] for r in runs]
        achieved = statistics.median(r[1] for r in runs)
        cpu_us = statistics.median(r[2] for r in runs) * 1e6
        print(f"  --pps {rate:>7,}: achieved {achieved:>9,.0f} pps, drops {drops}, "
              f"worker CPU {cpu_us:.2f} us/packet")
        if not any(drops):
            print(f"highest lossless rate: {rate:,} pps requested "
                  f"({min(r[1] for r in runs):,.0f} pps achieved), all {args.runs} runs")
            break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--cost-packets", type=int, default=20_000)
    ap.add_argument("--max-rate", type=int, default=500_000)
    ap.add_argument("--min-rate", type=int, default=100_000)
    ap.add_argument("--step", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mode", choices=("ring", "socket"), default="ring",
                    help="read path for the lossless-rate search")
    ap.add_argument("--sustained-loops", type=int, default=5,
                    help="then repeat the search with the capture looped this often, so the "
                         "64 MB ring cannot absorb the difference (0: skip)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp, netns_pair() as pair:
        pcap = make_capture(args.packets, Path(tmp))
        print(f"read cost per frame, {args.cost_packets} bench frames queued, then drained "
              f"(median of {args.runs}):")
        for mode in ("ring", "socket"):
            costs = [read_cost(pair, pcap, mode, args.cost_packets) for _ in range(args.runs)]
            print(f"  {mode:6}: {statistics.median(costs):.2f} us/frame "
                  f"({', '.join(f'{c:.2f}' for c in costs)})")
        search(pair, pcap, args, 1)
        if args.sustained_loops > 1:
            search(pair, pcap, args, args.sustained_loops)


if __name__ == "__main__":
    main()
