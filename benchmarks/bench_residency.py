#!/usr/bin/env python3
"""What geolocation and the residency policy cost, and what the embedded RIR data changes.

Replays the office-gateway bench capture in-process three ways, interleaved
and repeated (median): flows and handshakes only; plus geolocation from a
Country database built from the capture's own truth table and the default
Macau policy; plus the embedded RIR registry data instead of that database.
Then it compares, destination by destination, the country the database
gives with the country the registries give, and says why they differ.

    python3 benchmarks/bench_residency.py [--packets 1000000] [--runs 3]

Prints figures; asserts nothing (the verdicts themselves are checked by
tests/test_residency.py).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_replay import ensure_capture  # noqa: E402

from residency_monitor.capture.files import open_capture  # noqa: E402
from residency_monitor.engine import Engine  # noqa: E402
from residency_monitor.geo import GeoConfig, Geolocator  # noqa: E402
from residency_monitor.policy import default_policy  # noqa: E402
from residency_monitor.residency import Residency  # noqa: E402

TARGET_OVERHEAD = 0.10


def build_country_db(pcap: Path, out: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "geo" / "build_test_dbs.py"), "--kind", "country",
                    "--out", str(out), "--from-bench-truth", str(pcap) + ".truth.json"],
                   check=True, capture_output=True)


def replay_once(pcap: Path, residency: Residency | None) -> tuple[float, list]:
    records: list = []
    engine = Engine(sink=records.append, enrich=residency)
    start = time.perf_counter()
    with open_capture(pcap) as reader:
        engine.run(reader)
    engine.finish()
    return time.perf_counter() - start, records


def time_variants(pcap: Path, variants: dict[str, Residency | None], runs: int) -> dict:
    times: dict[str, list[float]] = {name: [] for name in variants}
    last: dict[str, list] = {}
    for _ in range(runs):
        for name, residency in variants.items():
            elapsed, records = replay_once(pcap, residency)
            times[name].append(elapsed)
            last[name] = records
    return {name: (statistics.median(ts), last[name]) for name, ts in times.items()}


def compare_sources(db_records: list, rir_records: list) -> None:
    """Per destination: the database's country against the registries' country."""
    db = {r.server_ip: r.dst_country for r in db_records if r.final and r.dst_country}
    rir = {r.server_ip: r.dst_country for r in rir_records if r.final and r.direction == "outbound"}
    changed = {ip: (db[ip], rir.get(ip)) for ip in db if rir.get(ip) != db[ip]}
    print(f"\ndestinations located by the database: {len(db):,}; "
          f"the RIR data gives another country for {len(changed):,} "
          f"({100 * len(changed) / max(1, len(db)):.1f}%)")
    pairs = Counter((a, b) for a, b in changed.values())
    for (a, b), n in pairs.most_common(12):
        print(f"  database {a} -> registry {b or 'none'}: {n:,} destinations "
              f"(e.g. {next(ip for ip, v in changed.items() if v == (a, b))})  {why(a, b)}")
    verdicts_db = Counter(r.verdict for r in db_records if r.final)
    verdicts_rir = Counter(r.verdict for r in rir_records if r.final)
    print(f"verdicts with the database: {dict(verdicts_db)}")
    print(f"verdicts with the RIR data: {dict(verdicts_rir)}")


def why(db: str, rir: str | None) -> str:
    if rir is None:
        return "registry has no country for it (unallocated, or a special block)"
    if db == "EU":
        return "the database's 'EU' is not a country; the registry names the holder's"
    if rir == "US":
        return "registered to a US company (cloud/CDN range), the server sits abroad"
    if rir in ("NL", "IE", "GB", "DE", "SG") and db == "US":
        return "registered in the holder's regional office, server in the US"
    return "registry country is the holder's, not the server's (or the block moved since)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench-data")
    args = ap.parse_args(argv)
    args.workdir.mkdir(exist_ok=True)
    name = "bench.pcap" if args.packets == 1_000_000 else f"bench{args.packets}.pcap"
    pcap, _truth = ensure_capture(args.workdir, args.packets, name)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench-country.mmdb"
        build_country_db(pcap, db)
        policy = default_policy()
        variants = {
            "flows + handshakes": None,
            "+ geo (Country db) + policy": Residency(
                policy, Geolocator(GeoConfig(databases=(str(db),), embedded=False))),
            "+ geo (embedded RIR) + policy": Residency(policy, Geolocator(GeoConfig())),
        }
        results = time_variants(pcap, variants, args.runs)
    base = results["flows + handshakes"][0]
    print(f"{args.packets:,} packets, median of {args.runs} interleaved in-process runs")
    for label, (elapsed, records) in results.items():
        overhead = elapsed / base - 1
        mark = "" if records is results["flows + handshakes"][1] else (
            f"  overhead {100 * overhead:+.1f}% (target < {100 * TARGET_OVERHEAD:.0f}%: "
            f"{'met' if overhead < TARGET_OVERHEAD else 'NOT met'})")
        print(f"  {label:<32} {elapsed:6.2f} s  {args.packets / elapsed:>9,.0f} pkt/s{mark}")
    compare_sources(results["+ geo (Country db) + policy"][1],
                    results["+ geo (embedded RIR) + policy"][1])


if __name__ == "__main__":
    main()
