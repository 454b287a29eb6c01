"""Capture workers joined by PACKET_FANOUT, on real interfaces (``capture.workers``).

The bench capture (an office gateway's traffic, 100k packets) is replayed by
tcpreplay over a veth pair between network namespaces. First the kernel's
part alone: two fanout sockets, every frame read, and no connection's
packets (either direction) on both. Then the daemon with ``workers: 2``:
each flow once, with replay's packets, bytes and verdict; the metrics of
one ``/metrics`` are the workers' sums; the audit log (written by the
parent alone) has each flow once and verifies.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import BENCH_GENERATOR, ROOT
from daemon_fixture import DaemonProcess
from daemon_fixture import scrape_samples as _metrics
from netns_fixture import NetnsPair, write_pcap

from residency_monitor import decode as dec
from residency_monitor.capture.files import open_capture
from residency_monitor.capture.live import LiveConfig, open_fanout
from residency_monitor.engine import Engine
from residency_monitor.geo import GeoConfig, Geolocator
from residency_monitor.policy import default_policy
from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay
from residency_monitor.residency import Residency

BENCH = ROOT / "bench-data" / "bench100k.pcap"
SEND_CPU = 0


@pytest.fixture(scope="module")
def bench_pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench-data/bench100k.pcap (generated if missing), destination MACs made foreign."""
    if not BENCH.exists():
        if not BENCH_GENERATOR.exists():
            pytest.skip(f"no bench capture generator at {BENCH_GENERATOR}")
        BENCH.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, str(BENCH_GENERATOR), "--packets", "100000", "--seed",
                        "1", "--out", str(BENCH)], check=True, capture_output=True)
    out = tmp_path_factory.mktemp("fanout") / "bench-replay.pcap"
    with open_capture(BENCH) as reader:
        write_pcap(out, reader)
    return out


def _connection(frame: bytes) -> tuple[int, bytes] | None:
    """The same value for both directions of a transport connection (None: not IP)."""
    d = dec.decode(frame, 1)
    if d[0] < 0:
        return None
    return d[0], min(d[1], dec.reverse_key(d[1]))


def test_kernel_fanout_hash_keeps_each_connection_on_one_socket(pair: NetnsPair,
                                                                bench_pcap: Path) -> None:
    """Both directions of every 5-tuple land on one socket; every frame lands somewhere."""
    sent = 40_000
    caps = open_fanout(LiveConfig(interfaces=(pair.dev_b,), netns=pair.b), 2)
    try:
        assert caps[0].fanout_groups == caps[1].fanout_groups != {}
        frames: list[list[bytes]] = [[], []]
        replayed = threading.Event()

        def drain(i: int) -> None:   # read while tcpreplay sends: a ring only holds so much
            idle = 0
            while idle < 5 or not replayed.is_set():
                batch = caps[i].read(0.05)
                idle = 0 if batch else idle + 1
                frames[i].extend(f[2] for f in batch)

        readers = [threading.Thread(target=drain, args=(i,)) for i in (0, 1)]
        for t in readers:
            t.start()
        try:
            rep = pair.replay(bench_pcap, pps=20_000, limit=sent, cpu=SEND_CPU)
        finally:
            replayed.set()
            for t in readers:
                t.join(60)
        stats = [cap.stats()[pair.dev_b] for cap in caps]
    finally:
        for cap in caps:
            cap.close()
    assert rep.sent == sent
    assert sum(len(f) for f in frames) == sent and all(frames), [len(f) for f in frames]
    assert [s[1] for s in stats] == [0, 0] and sum(s[0] for s in stats) == sent
    seen: list[set] = [{c for c in map(_connection, f) if c is not None} for f in frames]
    assert seen[0] and seen[1]
    assert not seen[0] & seen[1], f"{len(seen[0] & seen[1])} connections on both sockets"


def _offline(pcap: Path) -> list[FlowRecord]:
    recs: list[FlowRecord] = []
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    replay([pcap], recs.append, engine=Engine(sink=recs.append, enrich=residency))
    return [r for r in recs if r.final]


def _comparable(r: dict) -> tuple:
    return (r["client_ip"], r["client_port"], r["server_ip"], r["server_port"], r["transport"],
            r["vlan"], r["packets_out"], r["packets_in"], r["bytes_out"], r["bytes_in"],
            r["app"], r["tls_version"], r["tls_sni"], r["dst_country"], r["verdict"],
            tuple(r["violations"]))


def _wait_metric(port: int, name: str, want: float, timeout: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = _metrics(port)
        if m.get(name) == want or time.monotonic() > deadline:
            return m
        time.sleep(0.3)


def test_daemon_with_two_workers(pair: NetnsPair, bench_pcap: Path, tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "daemon", [
        "capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}", "  workers: 2",
        f"audit: {{path: {tmp_path / 'daemon' / 'audit'}, all_flows: true}}"])
    daemon.start()
    try:
        events = daemon.log_events()
        workers = next(e for e in events if e.get("event") == "workers")
        assert workers["workers"] == 2 and len(set(workers["pids"])) == 2
        rep = pair.replay(bench_pcap, pps=20_000, cpu=SEND_CPU)
        assert rep.sent == 100_000 and rep.failed == 0
        m = _wait_metric(daemon.port, "residency_packets_processed_total", 100_000)
        # one /metrics, the sums of both workers' engines and sockets
        assert m["residency_packets_processed_total"] == 100_000
        assert m[f'residency_packets_captured_total{{interface="{pair.dev_b}"}}'] == 100_000
        assert m[f'residency_packets_dropped_total{{interface="{pair.dev_b}"}}'] == 0
        assert m["residency_active_flows"] > 0
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    offline = _offline(BENCH)
    finals = daemon.final_records()
    keys = [(r["client_ip"], r["client_port"], r["server_ip"], r["server_port"],
             r["transport"], r["vlan"]) for r in finals]
    assert len(keys) == len(set(keys)), "a flow was recorded twice (split between workers?)"
    assert sorted(map(_comparable, finals)) == sorted(_comparable(r.to_dict()) for r in offline)
    stop = [e for e in daemon.log_events() if e.get("event") == "stop"]
    assert stop and stop[0]["packets"] == 100_000 and stop[0]["records"] == len(offline)

    # the audit log: the parent's alone, each record once, live verdicts once per flow
    from residency_monitor.audit import list_segments, read_lines

    audit_dir = tmp_path / "daemon" / "audit"
    entries = [json.loads(line) for seg in list_segments(audit_dir)
               for line, complete in read_lines(seg) if complete and line]
    flows = [e for e in entries if e["type"] in ("flow", "verdict")
             and "stage" not in e["data"]]
    assert len(flows) == len(offline)
    live = [(e["data"]["client_ip"], e["data"]["client_port"], e["data"]["server_ip"],
             e["data"]["server_port"], tuple(e["data"]["violations"]))
            for e in entries if e["type"] == "verdict" and e["data"].get("stage") == "live"]
    assert len(live) == len(set(live))
    assert [e["type"] for e in entries].count("start") == 1
    res = subprocess.run([sys.executable, "-m", "residency_monitor", "audit", "verify",
                          str(audit_dir)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
