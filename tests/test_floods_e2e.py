"""A real flood against the real daemon: bounded memory, counted excess, unchanged verdicts.

``residency-monitor run`` captures one end of a veth pair in a network
namespace (as in test_daemon_e2e.py) with small configured bounds. tcpreplay
sends a flood at top speed (SYNs from random sources, UDP to random ports,
overlapping and out-of-window segments that try to fill reassembly, DNS answers
that try to fill the name map), then the same kinds of flood again with the
bundled sample interleaved, at a rate the daemon keeps up with. Meanwhile the
daemon's resident memory is sampled from /proc. Then:

* its peak memory stayed under what the configuration allows (the daemon's
  size before the flood plus the documented per-unit costs of each bound);
* every bound was reached and its excess counted in /metrics;
* the sample's flows got the verdicts an offline replay of the sample gives.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import floods
import pytest
from daemon_fixture import DaemonProcess
from netns_fixture import NetnsPair, write_pcap

from residency_monitor.capture.files import open_capture
from residency_monitor.engine import Engine
from residency_monitor.geo import GeoConfig, Geolocator
from residency_monitor.policy import default_policy
from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay
from residency_monitor.residency import Residency
from residency_monitor.sample import SAMPLE_PATH

MAX_FLOWS = 5000
PER_FLOW = 8192
REASSEMBLY_TOTAL = 1 << 20
DATAGRAM_TOTAL = 64 << 10
DNS_ADDRESSES = 2000
#: what Python's allocator keeps beyond the bounds' contents (arenas of freed objects,
#: record and audit buffers, the metrics scrape): measured 5-15 MB, allowed twice that
SLACK = 32 << 20
INTERLEAVED_PPS = 15_000


def flood_frames(scale: float, seed: int) -> tuple[int, Iterator[bytes]]:
    cap = PER_FLOW // 2
    return floods.round_robin([
        floods.attack("syn", int(100_000 * scale), cap, seed),
        floods.attack("udp", int(10_000 * scale), cap, seed),
        floods.attack("segments", int(1_000 * scale), cap, seed),
        floods.attack("dns", int(2_500 * scale), cap, seed)])


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> tuple[Path, Path, int]:
    """The flood alone, and a smaller flood with the sample inside it."""
    out = tmp_path_factory.mktemp("floods")
    n, frames = flood_frames(1.0, 0)
    flood = out / "flood.pcap"
    write_pcap(flood, floods.timeline(frames, n, 1_700_000_000.0, 1.0), dst_mac=None)
    with open_capture(SAMPLE_PATH) as reader:
        sample = list(reader)
    t0, t1 = sample[0][0], sample[-1][0]
    n2, frames2 = flood_frames(0.3, 100)
    mixed = out / "mixed.pcap"
    count = len(write_pcap(mixed, floods.mix(floods.timeline(frames2, n2, t0, t1 - t0),
                                             iter(sample))))
    return flood, mixed, count


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def total(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


class RssSampler(threading.Thread):
    """VmRSS of a process every 20 ms, while it runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.samples.append(vm(self.pid, "VmRSS"))
            except (OSError, AssertionError):
                return


def caught_up(port: int, timeout: float = 60) -> dict[str, float]:
    """Wait until the daemon has processed every frame its socket received."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(port)
        received = total(m, "residency_packets_captured_total")
        if total(m, "residency_packets_processed_total") >= received - total(
                m, "residency_packets_dropped_total"):
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"the daemon did not catch up: {m}")
        time.sleep(0.2)


def offline_sample() -> dict[tuple, tuple]:
    recs: list[FlowRecord] = []
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    engine = Engine(sink=recs.append, enrich=residency)
    assert engine.inspection is not None
    residency.names = engine.inspection.names
    replay([SAMPLE_PATH], recs.append, engine=engine)
    return {key(r.to_dict()): (r.verdict, tuple(r.violations), r.packets_out + r.packets_in)
            for r in recs if r.final}


def key(r: dict) -> tuple:
    return (r["transport"], r["client_ip"], r["client_port"], r["server_ip"], r["server_port"])


def test_flood_against_the_daemon(pair: NetnsPair, captures, tmp_path: Path) -> None:
    flood, mixed, mixed_frames = captures
    daemon = DaemonProcess(tmp_path / "daemon", [
        "capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
        "flows:", "  tcp_closed: 1", f"  max_flows: {MAX_FLOWS}",
        f"  reassembly_bytes_per_flow: {PER_FLOW}",
        f"  reassembly_bytes_total: {REASSEMBLY_TOTAL}",
        f"  datagram_bytes_total: {DATAGRAM_TOTAL}", f"  dns_max_addresses: {DNS_ADDRESSES}"])
    try:
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        time.sleep(0.5)                      # let start-up allocations settle
        before = vm(pid, "VmRSS")
        sampler = RssSampler(pid)
        sampler.start()
        # 1. the flood at top speed: the kernel may drop what the daemon cannot read in time
        pair.replay(flood, topspeed=True)
        after_flood = caught_up(daemon.port)
        # 2. more of it, with the sample inside, at a rate read without loss
        result = pair.replay(mixed, pps=INTERLEAVED_PPS)
        assert result.sent == mixed_frames
        metrics = caught_up(daemon.port)
        sampler.stop.set()
        sampler.join()
        # the kernel updates the high-water mark lazily: it can trail a fresh VmRSS by a page
        peak = max(vm(pid, "VmHWM"), *sampler.samples)
        status = daemon.stop()
    finally:
        daemon.kill()
    assert status == 0, daemon.log_text()

    # Memory: under what the configuration allows, sampled and at its high-water mark.
    allowed = before + floods.bound_bytes(MAX_FLOWS, REASSEMBLY_TOTAL, DATAGRAM_TOTAL,
                                          DNS_ADDRESSES) + SLACK
    print(f"daemon RSS before the flood {before / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB, "
          f"allowed {allowed / 1e6:.1f} MB; frames captured "
          f"{total(metrics, 'residency_packets_captured_total'):.0f}, dropped by the kernel "
          f"{total(metrics, 'residency_packets_dropped_total'):.0f}; evicted flows "
          f"{metrics['residency_flows_evicted_total']:.0f}, handshake buffers "
          f"{metrics['residency_handshake_buffers_dropped_total']:.0f}, DNS addresses "
          f"{metrics['residency_dns_addresses_evicted_total']:.0f}")
    assert peak <= allowed, (f"peak RSS {peak / 1e6:.1f} MB > {allowed / 1e6:.1f} MB "
                             f"(before the flood {before / 1e6:.1f} MB)")

    # Every bound was reached, and the excess counted.
    captured = total(metrics, "residency_packets_captured_total")
    assert captured >= 100_000
    assert metrics["residency_active_flows"] <= MAX_FLOWS
    assert metrics["residency_flows_evicted_total"] >= 50_000
    assert metrics["residency_handshake_buffers_dropped_total"] > 0
    assert metrics['residency_reassembly_bytes{kind="handshake"}'] <= REASSEMBLY_TOTAL
    assert metrics["residency_dns_addresses"] <= DNS_ADDRESSES
    assert metrics["residency_dns_addresses_evicted_total"] >= 40_000
    # the interleaved part lost nothing: its verdicts can be compared
    dropped = total(metrics, "residency_packets_dropped_total")
    assert dropped == total(after_flood, "residency_packets_dropped_total"), (
        f"the kernel dropped frames of the interleaved replay at {INTERLEAVED_PPS} pps")

    # The sample's flows: the offline replay's verdicts, violations and packets.
    expected = offline_sample()
    got: dict[tuple, list[dict]] = {}
    for r in daemon.final_records():
        if key(r) in expected:
            got.setdefault(key(r), []).append(r)
    assert set(got) == set(expected)
    for k, (verdict, violations, packets) in expected.items():
        recs = got[k]
        assert {r["verdict"] for r in recs} == {verdict}, (k, recs)
        assert {tuple(r["violations"]) for r in recs} == {violations}, (k, recs)
        assert sum(r["packets_out"] + r["packets_in"] for r in recs) == packets, (k, recs)
    assert sum(len(v[1]) for v in expected.values()) >= 12
