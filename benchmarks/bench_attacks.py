"""Memory and verdicts under attack: each flood against an engine configured like the daemon.

For each attack of ``tests/floods.py`` (a SYN flood from millions of random
sources, UDP to random ports, overlapping and out-of-window TCP segments that
try to fill reassembly, DNS answers that try to fill the name map, and all of
them at once) the flood is generated deterministically, interleaved with the
bundled sample capture (26 flows, 12 violations under the default policy) over
the sample's 78 s of packet time, and written to ``bench-data/attack-NAME.pcap``
(git-ignored; the same file replays with tcpreplay). Then a fresh interpreter
per attack reads it through an :class:`Engine` built as the daemon builds it
(the configuration's ``flows:`` bounds, the default policy, the embedded
geolocation data, live judging, DNS names) and reports:

* packets and packets/s;
* peak RSS (``VmHWM`` of that interpreter) and its growth over the process
  before the flood, and the tracemalloc peak of a second run;
* the bound the configuration sets, from the per-unit costs below, and the
  measured growth against it;
* what was evicted or given up at each bound (flows, handshake buffers,
  datagrams, DNS addresses) and what was counted as malformed;
* whether the sample's flows got the same records (verdict, violations,
  packets, TLS facts, names) as in a clean replay of the sample alone.

``--gc`` compares the cyclic garbage collector's settings on the SYN flood
(the daemon's choice is documented in daemon.py only if it was worth it).

Usage, from the project root::

    python3 benchmarks/bench_attacks.py                 # every attack, default bounds, ~4 min
    python3 benchmarks/bench_attacks.py --attacks syn dns --scale 0.1
    python3 benchmarks/bench_attacks.py --max-flows 5000 --reassembly-total 1048576 \\
        --dns-max-addresses 2000 --scale 0.05           # the e2e test's small bounds
    python3 benchmarks/bench_attacks.py --gc            # cyclic GC settings on the SYN flood
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import floods  # noqa: E402
from netns_fixture import write_pcap  # noqa: E402

from residency_monitor.capture.files import open_capture  # noqa: E402
from residency_monitor.engine import Engine, EngineConfig  # noqa: E402
from residency_monitor.flows import FlowConfig  # noqa: E402
from residency_monitor.geo import GeoConfig, Geolocator  # noqa: E402
from residency_monitor.policy import default_policy  # noqa: E402
from residency_monitor.records import FlowRecord  # noqa: E402
from residency_monitor.residency import Residency  # noqa: E402
from residency_monitor.sample import SAMPLE_PATH  # noqa: E402

FLOW_BYTES, DNS_ADDRESS_BYTES = floods.FLOW_BYTES, floods.DNS_ADDRESS_BYTES
REASSEMBLY_FACTOR = floods.REASSEMBLY_FACTOR
#: attack -> (scale at --scale 1, what the scale counts)
SCALES = {"syn": (2_000_000, "SYNs"), "udp": (1_000_000, "datagrams"),
          "segments": (3_000, "connections"), "dns": (50_000, "answers"),
          "mixed": (1, "all four at a quarter of their scale")}

Key = tuple


def flows_config(args: argparse.Namespace) -> FlowConfig:
    d = FlowConfig()
    return FlowConfig(max_flows=args.max_flows or d.max_flows,
                      reassembly_bytes_total=args.reassembly_total or d.reassembly_bytes_total,
                      dns_max_addresses=args.dns_max_addresses or d.dns_max_addresses)


def bound_bytes(fc: FlowConfig) -> int:
    """What the configuration lets a flood fill, beyond the process before it."""
    return floods.bound_bytes(fc.max_flows, fc.reassembly_bytes_total, fc.max_reassembly_bytes,
                              fc.dns_max_addresses)


# -- traffic -------------------------------------------------------------------------------

def sample_frames() -> list[tuple[float, int, bytes, int]]:
    with open_capture(SAMPLE_PATH) as reader:
        return list(reader)


def flood(name: str, scale: float, cap: int) -> tuple[int, Iterator[bytes]]:
    if name != "mixed":
        return floods.attack(name, max(1, int(SCALES[name][0] * scale)), cap)
    return floods.round_robin([floods.attack(a, max(1, int(SCALES[a][0] * scale / 4)), cap)
                               for a in floods.ATTACKS])


def write_attack(path: Path, name: str, scale: float, cap: int) -> int:
    """The flood spread over the sample's time span, the sample inside it; frames written."""
    sample = sample_frames()
    t0, t1 = sample[0][0], sample[-1][0]
    n, frames = flood(name, scale, cap)
    stream = floods.mix(floods.timeline(frames, n, t0, t1 - t0), iter(sample))
    tmp = path.with_suffix(".tmp")
    count = len(write_pcap(tmp, stream, dst_mac=None))
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps({"attack": name, "scale": scale, "cap": cap,
                                                     "frames": count}))
    return count


# -- the engine, as the daemon builds it ---------------------------------------------------

def record_key(r: FlowRecord | dict) -> Key:
    g = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    return (g("transport"), g("client_ip"), g("client_port"), g("server_ip"), g("server_port"),
            g("icmp_id"))


def comparable(r: FlowRecord) -> tuple:
    return (r.packets_out, r.packets_in, r.bytes_out, r.bytes_in, r.app, r.tls_version,
            r.tls_sni, r.tls_ja4, tuple(r.server_names or ()), r.dst_country, r.verdict,
            tuple(r.violations))


def build_engine(fc: FlowConfig, keep: set[Key] | None):
    """Engine + Residency wired as daemon.Daemon wires them; the records of ``keep`` kept."""
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    kept: dict[Key, list[tuple]] = {}
    counts = {"records": 0, "live_violations": 0}

    def sink(rec: FlowRecord) -> None:
        counts["records"] += 1
        if rec.final and (keep is None or record_key(rec) in keep):
            kept.setdefault(record_key(rec), []).append(comparable(rec))

    def live(flow, ts: float, stage: str) -> None:
        if residency.judge_live(flow, ts, stage) is not None:
            counts["live_violations"] += 1

    engine = Engine(EngineConfig(flows=fc), sink=sink, live=live, enrich=residency)
    if engine.inspection is not None:
        residency.names = engine.inspection.names
    return engine, kept, counts


def clean_sample(fc: FlowConfig) -> dict[Key, list[tuple]]:
    engine, kept, _ = build_engine(fc, None)
    engine.run(sample_frames())
    engine.finish()
    return kept


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def worker(pcap: Path, fc: FlowConfig, use_tracemalloc: bool, gc_mode: str) -> dict:
    """One attack in this (fresh) interpreter: feed the capture, measure, compare."""
    import tracemalloc

    clean = clean_sample(fc)
    engine, kept, counts = build_engine(fc, set(clean))
    gc.collect()
    if gc_mode == "freeze":
        gc.freeze()
    elif gc_mode == "threshold":
        gc.set_threshold(50_000, 20, 100)
    elif gc_mode == "freeze+threshold":
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    gc_time = [0.0, 0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_time.append(time.perf_counter())
        else:
            gc_time[0] += time.perf_counter() - gc_time.pop()
            gc_time[1] += info["generation"] == 2

    gc.callbacks.append(on_gc)
    base_rss = vm("VmRSS")
    if use_tracemalloc:
        tracemalloc.start()
    t0 = time.perf_counter()
    with open_capture(pcap) as reader:
        engine.run(reader)
    seconds = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1] if use_tracemalloc else 0
    if use_tracemalloc:
        tracemalloc.stop()
    peak = vm("VmHWM")
    gc.callbacks.remove(on_gc)
    insp = engine.inspection
    assert insp is not None
    held = {"flows": engine.table.count, "handshake_bytes": insp.budget.held,
            "handshake_peak": insp.budget.peak, "datagram_bytes": engine.table.reassembly_bytes,
            "dns_addresses": len(insp.names)}
    engine.finish()
    stats = engine.table.stats
    same = sum(1 for k, v in clean.items() if kept.get(k) == v)
    differs = sorted(f"{k}: clean {clean[k]} flood {kept.get(k)}"
                     for k in clean if kept.get(k) != clean[k])
    return {"packets": engine.packets, "seconds": seconds, "base_rss": base_rss,
            "peak_rss": peak, "traced_peak": traced, "held": held,
            "evicted": {"flows": stats["flows_evicted"],
                        "handshake_buffers": insp.budget.dropped,
                        "handshake_bytes": insp.budget.dropped_bytes,
                        "datagrams": stats["datagrams_dropped"],
                        "dns_addresses": insp.names.stats["evicted"]},
            "malformed": dict(engine.bad), "malformed_by_protocol": dict(engine.bad_protocol),
            "parse_errors": dict(insp.errors), "records": counts["records"],
            "live_violations": counts["live_violations"], "gc_s": gc_time[0],
            "gc_full": gc_time[1], "sample_flows": len(clean), "sample_same": same,
            "sample_violations": sum(len(v[-1][-1]) for v in clean.values()),
            "differs": differs[:5]}


def run_worker(pcap: Path, args: argparse.Namespace, use_tracemalloc: bool,
               gc_mode: str = "default") -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", str(pcap),
            "--gc-mode", gc_mode]
    for flag, value in (("--max-flows", args.max_flows), ("--reassembly-total",
                        args.reassembly_total), ("--dns-max-addresses", args.dns_max_addresses)):
        if value:
            argv += [flag, str(value)]
    if use_tracemalloc:
        argv.append("--tracemalloc")
    out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- report --------------------------------------------------------------------------------

def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def ensure_pcap(args: argparse.Namespace, name: str, cap: int) -> Path:
    path = args.workdir / f"attack-{name}.pcap"
    meta = path.with_suffix(".json")
    want = {"attack": name, "scale": args.scale, "cap": cap}
    if path.exists() and meta.exists() and all(
            json.loads(meta.read_text()).get(k) == v for k, v in want.items()):
        return path
    t0 = time.perf_counter()
    n = write_attack(path, name, args.scale, cap)
    print(f"  wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
          f"({n:,} frames, {mb(path.stat().st_size)}) in {time.perf_counter() - t0:.1f} s",
          flush=True)
    return path


def report(name: str, plain: dict, traced: dict, fc: FlowConfig) -> None:
    bound = bound_bytes(fc)
    growth = plain["peak_rss"] - plain["base_rss"]
    h, e = plain["held"], plain["evicted"]
    same = plain["sample_same"] == plain["sample_flows"]
    print(f"{name}: {plain['packets']:,} packets, {plain['packets'] / plain['seconds']:,.0f} pkts/s"
          f" ({plain['seconds']:.1f} s; cyclic GC {plain['gc_s']:.1f} s in {plain['gc_full']} "
          f"full collections)")
    print(f"  memory: peak RSS {mb(plain['peak_rss'])} (before the flood {mb(plain['base_rss'])},"
          f" growth {mb(growth)}); tracemalloc peak {mb(traced['traced_peak'])}; "
          f"bound {mb(bound)}: growth {100 * growth / bound:.0f}% of it, "
          f"{'under' if growth <= bound else 'OVER'}")
    print(f"  held at the end: {h['flows']:,} flows (max {fc.max_flows:,}), handshake bytes "
          f"{h['handshake_bytes']:,} (peak {h['handshake_peak']:,}, max "
          f"{fc.reassembly_bytes_total:,}), datagram bytes {h['datagram_bytes']:,}, "
          f"DNS addresses {h['dns_addresses']:,} (max {fc.dns_max_addresses:,})")
    print(f"  evicted/given up: flows {e['flows']:,}, handshake buffers "
          f"{e['handshake_buffers']:,} ({e['handshake_bytes']:,} bytes), datagrams "
          f"{e['datagrams']:,}, DNS addresses {e['dns_addresses']:,}")
    if plain["malformed"] or plain["parse_errors"]:
        print(f"  malformed: {plain['malformed']} by protocol "
              f"{plain['malformed_by_protocol']}; parse errors {plain['parse_errors']}")
    print(f"  sample: {plain['sample_same']}/{plain['sample_flows']} flows with the same record "
          f"as a clean replay ({plain['sample_violations']} violations): "
          f"{'same verdicts' if same else 'DIFFERENT'}; live violations "
          f"{plain['live_violations']}, records {plain['records']:,}")
    for line in plain["differs"]:
        print(f"    differs: {line}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attacks", nargs="+", choices=(*floods.ATTACKS, "mixed"),
                    default=[*floods.ATTACKS, "mixed"])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every attack's size (1: 2M SYNs, 1M UDP, 3,000 segment "
                         "connections, 50,000 DNS answers)")
    ap.add_argument("--max-flows", type=int, default=0)
    ap.add_argument("--reassembly-total", type=int, default=0)
    ap.add_argument("--dns-max-addresses", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench-data")
    ap.add_argument("--gc", action="store_true",
                    help="compare cyclic GC settings on the SYN flood instead")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gc-mode", default="default", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    fc = flows_config(args)
    if args.worker:
        print(json.dumps(worker(args.worker, fc, args.tracemalloc, args.gc_mode)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    cap = fc.reassembly_bytes_per_flow // 2
    print(f"python {sys.version.split()[0]}; bounds: max_flows {fc.max_flows:,}, "
          f"reassembly {fc.reassembly_bytes_per_flow:,} B/flow and {fc.reassembly_bytes_total:,} "
          f"B in all, datagrams {fc.max_reassembly_bytes:,} B, DNS addresses "
          f"{fc.dns_max_addresses:,}; bound on growth {mb(bound_bytes(fc))} "
          f"(flows x {FLOW_BYTES} B + {REASSEMBLY_FACTOR} x reassembly + datagrams + "
          f"addresses x {DNS_ADDRESS_BYTES} B)", flush=True)
    if args.gc:
        path = ensure_pcap(args, "syn", cap)
        for mode in ("default", "freeze", "threshold", "freeze+threshold"):
            r = run_worker(path, args, False, mode)
            print(f"  gc {mode:17s} {r['seconds']:5.1f} s, {r['packets'] / r['seconds']:9,.0f} "
                  f"pkts/s, cyclic GC {r['gc_s']:.2f} s in {r['gc_full']} full collections, "
                  f"peak RSS {mb(r['peak_rss'])}", flush=True)
        return
    for name in args.attacks:
        path = ensure_pcap(args, name, cap)
        plain = run_worker(path, args, False)
        traced = run_worker(path, args, True)
        report(name, plain, traced, fc)
        print(flush=True)


if __name__ == "__main__":
    main()
