#!/usr/bin/env python3
"""What collecting NetFlow v9 / IPFIX costs: records per second decoded, and end to end.

softflowd exports the office-gateway bench capture (IPFIX and NetFlow v9) to
a UDP socket; the datagrams are kept and then, repeated (median):

- **decode**: :class:`FlowDecoder` alone (datagrams to ExportedFlow facts);
- **collect**: decode, join the two directions, build flow records, no policy;
- **judge**: the same with geolocation (embedded RIR data) and the Macau policy:
  what the daemon does per datagram before its sinks;
- **udp**: the datagrams sent over loopback to :class:`FlowExportInput` and judged
  (socket reads included; sent in bursts of 256 so the kernel buffer never drops).

    python3 benchmarks/bench_collector.py [--packets 1000000] [--runs 3]

Prints figures; asserts nothing (correctness: tests/test_collector_e2e.py).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_replay import ensure_capture  # noqa: E402

from residency_monitor.collector import (  # noqa: E402
    FlowExportCollector,
    FlowExportInput,
    Source,
)
from residency_monitor.geo import GeoConfig, Geolocator  # noqa: E402
from residency_monitor.netflow import FlowDecoder  # noqa: E402
from residency_monitor.networks import DEFAULT_INTERNAL, NetworkSet  # noqa: E402
from residency_monitor.policy import default_policy  # noqa: E402
from residency_monitor.residency import Residency  # noqa: E402


def exported(pcap: Path, version: int) -> list[bytes]:
    """softflowd's datagrams for the whole capture."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        subprocess.run(["softflowd", "-r", str(pcap), "-n", f"127.0.0.1:{port}", "-v",
                        str(version), "-6", "-a", "-d", "-m", "2000000"],
                       check=True, capture_output=True)
        sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(sock.recv(65535))
            except BlockingIOError:
                return out


def timed(fn: Callable[[], int], runs: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), n


def measure(datagrams: list[bytes], residency: Residency, runs: int) -> None:
    def decode() -> int:
        d = FlowDecoder()
        return sum(len(d.feed(dg, "127.0.0.1", 0.0)) for dg in datagrams)

    def collect(enrich: Residency | None = None) -> int:
        out: list = []
        c = FlowExportCollector(out.append, enrich)
        for dg in datagrams:
            c.feed(dg, "127.0.0.1", 0.0)
        c.flush()
        return len(out)

    def udp() -> int:
        out: list = []
        inp = FlowExportInput((Source("ipfix", "127.0.0.1", 0),),
                              FlowExportCollector(out.append, residency))
        inp.open()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(0, len(datagrams), 256):
                for dg in datagrams[i:i + 256]:
                    tx.sendto(dg, ("127.0.0.1", inp.ports[0]))
                inp.read(0)
        inp.close()
        return len(out)

    secs, records = timed(decode, runs)
    print(f"  decode   {records / secs:>10,.0f} data records/s   ({records:,} in {secs:.2f} s)")
    for what, fn in (("collect", collect), ("judge", lambda: collect(residency)),
                     ("udp", udp)):
        secs, n = timed(fn, runs)
        print(f"  {what:<8} {n / secs:>10,.0f} flow records/s   ({n:,} in {secs:.2f} s; "
              f"{records / secs:,.0f} data records/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench-data")
    args = ap.parse_args()
    if shutil.which("softflowd") is None:
        sys.exit("softflowd is not installed (apt-get install softflowd)")
    name = "bench.pcap" if args.packets == 1_000_000 else f"bench{args.packets}.pcap"
    pcap, _truth = ensure_capture(args.workdir, args.packets, name)
    geo = Geolocator(GeoConfig())
    residency = Residency(default_policy(), geo, NetworkSet(DEFAULT_INTERNAL))

    for version, label in ((10, "IPFIX"), (9, "NetFlow v9")):
        datagrams = exported(pcap, version)
        print(f"\n{label}: {len(datagrams):,} datagrams, "
              f"{sum(map(len, datagrams)) / 1e6:.1f} MB from softflowd")
        measure(datagrams, residency, args.runs)
    geo.close()


if __name__ == "__main__":
    main()
