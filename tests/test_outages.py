"""What the daemon promises when things around it fail, each fault produced for real.

- An Alertmanager stopped (SIGTERM: connection refused) while violations are
  raised, then started again on its port: every alert raised meanwhile
  arrives, in the order raised, each once, with its original ``startsAt``;
  past ``alertmanager.queue_size`` the oldest are dropped, counted and logged,
  and re-sends never drop (or count) them again.
- Scrapes of ``/metrics`` during a storm of SIGHUP reloads (valid and
  invalid policies in turn) and during a tcpreplay flood at top speed: each
  served within SCRAPE_TIMEOUT.
- SIGTERM in the middle of a flood, with alerts queued for an Alertmanager
  that is down: exit 0 within STOP_BOUND, open flows flushed to the records,
  the audit log closed by its last checkpoint and verifying, the alerts left
  undelivered counted in the log and the audit log.

The daemon runs as a subprocess capturing one end of a veth pair in a network
namespace (tests/netns_fixture.py); tcpreplay sends on the other end. The
order in which alerts reach Alertmanager is read off the loopback wire (an
AF_PACKET socket on ``lo``), not from a stand-in server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alertmanager_fixture import (  # noqa: F401  (fixtures)
    Alertmanager,
    alertmanager_factory_fixture,
    alertmanager_fixture,
    webhook_fixture,
)
from conftest import ROOT
from daemon_fixture import DaemonProcess
from netns_fixture import NetnsPair, write_pcap
from prometheus_client.parser import text_string_to_metric_families

from residency_monitor.alerts import BACKOFF_MAX
from residency_monitor.capture.files import open_capture
from residency_monitor.daemon import SHUTDOWN_ALERT_WAIT
from residency_monitor.networks import NetworkSet
from residency_monitor.sample import SAMPLE_PATH

OUTAGE = 20.0           # seconds Alertmanager is down ("minutes", scaled down)
RESEND = 2              # alertmanager.resend_interval of the test daemons
SCRAPE_TIMEOUT = 1.0    # stricter than Prometheus' default scrape_timeout (10 s)
# SIGTERM to exit under a flood: the alert hand-off may take SHUTDOWN_ALERT_WAIT (5 s)
# when Alertmanager is down, the rest (closing capture, flushing the flow table,
# the audit log's checkpoint) must fit in what is left; systemd's TimeoutStopSec
# (30 s) is three times the bound.
STOP_BOUND = 10.0
FLOOD_PACKETS = 300_000
POLICY = ROOT / "configs" / "policies" / "macau-pdpa.yaml"
SCANNER = bytes((10, 10, 4, 7))   # an office host gone bad (the default internal networks)
# the flood's own addresses: tests/floods.py's VICTIM_TCP and VICTIM_UDP, and SCANNER
FLOODERS = ("10.10.3.200", "10.10.3.201", "10.10.4.7")

Identity = tuple[str, str, str, str]   # (rule, zone, country, destination): one pushed alert


# ----------------------------------------------------------------------------- traffic

def _bench_alerts() -> ModuleType:
    """benchmarks/bench_alerts.py, for its frame shifter (new addresses: new alerts)."""
    spec = importlib.util.spec_from_file_location(
        "bench_alerts", ROOT / "benchmarks" / "bench_alerts.py")
    assert spec is not None and spec.loader is not None
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up while built
    spec.loader.exec_module(module)
    return module


def sample_round(k: int, workdir: Path) -> Path:
    """The sample with external addresses and ephemeral ports moved by ``k``: 12 new alerts."""
    shift = _bench_alerts().shift_frame
    internal = NetworkSet()
    with open_capture(SAMPLE_PATH) as reader:
        frames = [(ts, lt, shift(fr, k, internal), wl) for ts, lt, fr, wl in reader]
    path = workdir / f"round-{k}.pcap"
    write_pcap(path, frames)
    return path


def scan(n: int, seed: int = 7) -> Iterator[bytes]:
    """SYNs from one office host to ``n`` random public servers: a violation each."""
    import floods

    rng = random.Random(seed)
    for _ in range(n):
        yield floods.tcp(SCANNER, floods.public_address(rng), rng.randrange(32768, 61000), 443,
                         rng.getrandbits(32), floods.SYN)


def flood_pcap(workdir: Path, packets: int = FLOOD_PACKETS) -> Path:
    """Inbound SYN and UDP floods (tests/floods.py) and an outbound scan, a third each.

    The scan makes the flood a flood of violations too: alerts, audit entries
    and records for the daemon to hand over when it stops.
    """
    import floods

    third = packets // 3
    total, frames = floods.round_robin([(third, floods.syn_flood(third)),
                                        (third, floods.udp_flood(third)),
                                        (packets - 2 * third, scan(packets - 2 * third))])
    path = workdir / "flood.pcap"
    write_pcap(path, floods.timeline(frames, total, time.time(), 1.0))
    return path


def sample_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records
            if r["server_ip"] not in FLOODERS and r["client_ip"] not in FLOODERS]


def offline_flows(pcap: Path) -> int:
    """How many flows ``residency-monitor replay`` finds in ``pcap``."""
    from residency_monitor.replay import replay

    records: list[Any] = []
    replay([pcap], records.append)
    return sum(1 for r in records if r.final)


class Flood:
    """tcpreplay at top speed in the background, looping, until stopped."""

    def __init__(self, pair: NetnsPair, pcap: Path, loops: int) -> None:
        self.proc = pair.popen(pair.a, "tcpreplay", "-K", "--topspeed", f"--loop={loops}",
                               "-i", pair.dev_a, os.fspath(pcap),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> str:
        out, _ = self.proc.communicate(timeout=timeout)
        return out.decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.communicate(timeout=10)


# ----------------------------------------------------------------------------- observers

PACKET_OUTGOING = 4


@dataclass
class _Connection:
    isn: int
    segments: dict[int, bytes] = field(default_factory=dict)


class PostRecorder:
    """The JSON bodies POSTed to ``port`` on loopback, in connection order, off the wire.

    The alert client opens a connection per POST, so connection order is POST
    order. Each loopback packet passes a packet socket twice (out, then in);
    only the incoming copy is kept.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.connections: list[_Connection] = []
        self._open: dict[int, _Connection] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="post-recorder")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(1 << 18)
            except TimeoutError:
                continue
            if addr[2] == PACKET_OUTGOING or len(frame) < 54 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            if ip[9] != 6:
                continue
            tcp = ip[(ip[0] & 0x0F) * 4:]
            sport, dport, seq = struct.unpack("!HHI", tcp[:8])
            if dport != self.port:
                continue
            flags, payload = tcp[13], tcp[(tcp[12] >> 4) * 4:]
            if flags & 0x02:   # SYN: a new connection from this port
                self._open[sport] = _Connection(seq)
                self.connections.append(self._open[sport])
            elif payload and sport in self._open:
                self._open[sport].segments[seq] = payload

    def posts(self) -> list[list[dict[str, Any]]]:
        """Every complete POST body so far, in order."""
        out = []
        for conn in list(self.connections):
            segments = dict(conn.segments)
            stream = b"".join(segments[s] for s in sorted(
                segments, key=lambda s: (s - conn.isn) % (1 << 32)))
            head, _, body = stream.partition(b"\r\n\r\n")
            if not head.startswith(b"POST "):
                continue
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), -1)
            if len(body) >= length > 0:
                out.append(json.loads(body[:length]))
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def identity(alert: dict[str, Any]) -> Identity:
    labels = alert["labels"]
    return labels["rule"], labels["zone"], labels["dst_country"], labels["destination"]


def audit_entries(directory: Path) -> list[dict[str, Any]]:
    from residency_monitor.audit import list_segments, read_lines

    return [json.loads(line) for seg in list_segments(directory)
            for line, complete in read_lines(seg) if complete and line]


def first_raised(directory: Path) -> dict[Identity, float]:
    """Alert identities in the order the daemon raised them, with when (wall clock).

    The daemon writes a verdict to the audit log, flushed, before it submits
    the alert about it, so the first verdict naming an identity is its raise.
    """
    order: dict[Identity, float] = {}
    for entry in audit_entries(directory):
        if entry["type"] != "verdict":
            continue
        d = entry["data"]
        for rule in d.get("violations") or ():
            order.setdefault((rule, d.get("zone") or "default",
                              d.get("dst_country") or "unlocated", d["server_ip"]),
                             epoch(entry["time"]))
    return order


def raise_order(directory: Path) -> list[Identity]:
    return list(first_raised(directory))


def scrape(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples with ``labels`` (0 when absent)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class Scraper:
    """Scrapes /metrics in a loop with a strict timeout; every attempt is recorded."""

    def __init__(self, port: int, timeout: float = SCRAPE_TIMEOUT) -> None:
        self.port, self.timeout = port, timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scraper")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                text = scrape(self.port, self.timeout)
                if "residency_build_info" not in text:
                    raise ValueError("incomplete exposition")
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            else:
                self.latencies.append(time.monotonic() - t0)
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def summary(self) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return "no scrapes"
        return (f"{len(lat)} scrapes, p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
                f"p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def epoch(rfc3339: str) -> float:
    import datetime as dt

    text = rfc3339.replace("Z", "+00:00")
    if "." in text:   # Go prints up to nanoseconds; Python reads microseconds
        head, frac = text.split(".", 1)
        digits = "".join(ch for ch in frac if ch.isdigit())
        text = f"{head}.{digits[:6]}{frac[len(digits):]}"
    return dt.datetime.fromisoformat(text).timestamp()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    made: list[DaemonProcess] = []

    def make(pair: NetnsPair, *extra: str, flows: str | None = "{tcp_idle: 5, tcp_closed: 1, "
             "udp_idle: 2}") -> DaemonProcess:
        lines = ["capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
                 *([f"flows: {flows}"] if flows else []), *extra]
        daemon = DaemonProcess(tmp_path / f"daemon-{len(made)}", lines)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


def alertmanager_section(am: Alertmanager, *extra: str) -> list[str]:
    return ["alertmanager:", f"  urls: [{am.url}]", f"  resend_interval: {RESEND}",
            "  labels: {site: outage}", *extra]


# ----------------------------------------------------------------------------- tests

def test_alertmanager_outage_every_alert_arrives_in_order_with_its_starts_at(
        pair: NetnsPair, alertmanager: Alertmanager, make_daemon, tmp_path: Path) -> None:
    rounds = {k: sample_round(k, tmp_path) for k in (1, 2, 3)}
    daemon = make_daemon(pair, *alertmanager_section(alertmanager))
    daemon.start()
    recorder = None
    try:
        # steady state: round 1's alerts are delivered at once
        pair.replay(rounds[1], pps=2000)
        wait_until(lambda: len(alertmanager.get_alerts()) >= 12, 20, "round 1 delivered")

        alertmanager.stop()
        down_at = time.time()
        assert refused(alertmanager.port)
        pair.replay(rounds[2], pps=2000)
        time.sleep(3)
        pair.replay(rounds[3], pps=2000)
        time.sleep(7)
        pair.replay(rounds[2], pps=2000)   # the same alerts raised again, by new flows
        audit_dir = daemon.workdir / "audit"
        during = [i for i, at in first_raised(audit_dir).items() if at >= down_at]
        assert len(during) == 24, during
        time.sleep(max(0.0, down_at + OUTAGE - time.time()))
        text = scrape(daemon.port)
        assert metric(text, "residency_alerts_queued") >= 24
        assert metric(text, "residency_alerts_failed_total", reason="connection") >= 24
        assert metric(text, "residency_alert_retries_total") >= 3
        sent_before = metric(text, "residency_alerts_sent_total")

        recorder = PostRecorder(alertmanager.port)
        alertmanager.start()
        up_at = time.time()
        ids = set(during)
        got = wait_until(lambda: {identity(a): a for a in alertmanager.get_alerts()
                                  if identity(a) in ids} if ids <= {
            identity(a) for a in alertmanager.get_alerts()} else None,
            BACKOFF_MAX + 10, "every alert raised during the outage in Alertmanager")
        recovered = time.time() - up_at

        # with its original startsAt: the first packet of the flow that raised it
        records = daemon.final_records()
        for ident, alert in got.items():
            starts = {round(r["ts_start"], 3) for r in records if r["server_ip"] == ident[3]
                      and ident[0] in r["violations"]}
            assert any(abs(epoch(alert["startsAt"]) - s) < 0.002 for s in starts), \
                (ident, alert["startsAt"], starts)
            assert epoch(alert["startsAt"]) < up_at - 5
            assert epoch(alert["startsAt"]) <= epoch(alert["annotations"]["detected_at"])
            assert alert["labels"]["site"] == "outage"

        # in order, each once: the first POST after the restart carries the queue
        wait_until(recorder.posts, 5, "a POST seen on the wire")
        first = [identity(a) for a in recorder.posts()[0]]
        assert len(first) == len(set(first))
        assert [i for i in first if i in ids] == during
        # no drops; the retries are counted
        text = scrape(daemon.port)
        assert metric(text, "residency_alerts_dropped_total") == 0
        assert metric(text, "residency_alerts_sent_total") >= sent_before + 24
        assert any(e.get("msg", "").startswith("alertmanager ") and "delivering again"
                   in e["msg"] for e in daemon.log_events())
        print(f"\noutage {time.time() - down_at:.0f} s: {len(during)} alerts raised while "
              f"down all arrived, in raise order, {recovered:.1f} s after Alertmanager "
              f"was back (retry backoff capped at {BACKOFF_MAX:.0f} s)")
    finally:
        if recorder is not None:
            recorder.close()
        assert daemon.stop() == 0


def test_queue_bound_drops_the_oldest_counts_and_logs_them(
        pair: NetnsPair, alertmanager: Alertmanager, make_daemon, tmp_path: Path) -> None:
    bound = 5
    pcap = sample_round(4, tmp_path)
    alertmanager.stop()
    daemon = make_daemon(pair, *alertmanager_section(alertmanager, f"  queue_size: {bound}"))
    daemon.start()
    recorder = None
    try:
        pair.replay(pcap, pps=2000)
        wait_until(lambda: metric(scrape(daemon.port), "residency_alerts_dropped_total") >= 7,
                   20, "the 7 oldest of 12 dropped")
        order = raise_order(daemon.workdir / "audit")
        assert len(order) == 12
        # re-sends of dropped alerts while Alertmanager is still down drop nothing more
        time.sleep(3 * RESEND + 1)
        text = scrape(daemon.port)
        assert metric(text, "residency_alerts_dropped_total") == 12 - bound
        assert metric(text, "residency_alerts_queued") == bound
        drops = [e for e in daemon.log_events() if f"queue full ({bound})" in e.get("msg", "")]
        assert drops and drops[0]["level"] == "warning"
        assert any(order[0][3] in e["msg"] for e in drops)   # names what it dropped
        assert sum(1 for e in audit_entries(daemon.workdir / "audit")
                   if e["type"] == "alert_failure" and "queue full" in e["data"]["error"])

        recorder = PostRecorder(alertmanager.port)
        alertmanager.start()
        wait_until(recorder.posts, BACKOFF_MAX + 5, "the queue delivered")
        assert [identity(a) for a in recorder.posts()[0]] == order[-bound:]
        wait_until(lambda: set(order[-bound:]) <= {identity(a) for a in
                                                   alertmanager.get_alerts()},
                   5, "the newest 5 in Alertmanager")
        # re-sends after the recovery drop nothing either: a re-send that finds the queue
        # full is skipped (its alert was delivered, or dropped and counted, before)
        time.sleep(RESEND + 1)
        assert metric(scrape(daemon.port), "residency_alerts_dropped_total") == 12 - bound
    finally:
        if recorder is not None:
            recorder.close()
        assert daemon.stop() == 0


def test_scrapes_are_served_during_reload_storms_and_floods(
        pair: NetnsPair, make_daemon, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    valid, invalid = POLICY.read_text(), "policy: [this is not a policy\n"
    policy.write_text(valid)
    daemon = make_daemon(pair, f"policy: {policy}")
    daemon.start()
    flood = flood_pcap(tmp_path)
    figures = []
    try:
        # 1. SIGHUP every 20-80 ms for 5 s, the policy valid and invalid by turns (the
        # loop takes the flag at its next tick: uneven gaps, so it sees both)
        rng = random.Random(1)
        scraper = Scraper(daemon.port)
        for i in range(100):
            tmp = policy.with_suffix(".new")
            tmp.write_text(valid if i // 3 % 2 else invalid)
            os.replace(tmp, policy)
            daemon.signal(signal.SIGHUP)
            time.sleep(rng.uniform(0.02, 0.08))
        time.sleep(0.5)
        scraper.stop()
        assert not scraper.failures, scraper.failures[:5]
        assert scraper.latencies and max(scraper.latencies) < SCRAPE_TIMEOUT
        reloads = [e for e in daemon.log_events() if e.get("event") == "policy_reload"]
        assert {e["result"] for e in reloads} == {"success", "failure"}
        assert len(reloads) >= 20
        figures.append(f"during {len(reloads)} reloads: {scraper.summary()}")

        # 2. a flood at top speed (10 x 300k packets)
        scraper = Scraper(daemon.port)
        replay = Flood(pair, flood, loops=10)
        out = replay.wait(120)
        time.sleep(0.5)
        scraper.stop()
        assert "Successful packets" in out, out
        assert not scraper.failures, scraper.failures[:5]
        assert scraper.latencies and max(scraper.latencies) < SCRAPE_TIMEOUT
        text = scrape(daemon.port)
        processed = metric(text, "residency_packets_processed_total")
        dropped = metric(text, "residency_packets_dropped_total")
        assert processed > 10_000   # the flood reached it (the kernel drops what it cannot take)
        figures.append(f"during a flood ({processed:.0f} packets processed, {dropped:.0f} "
                       f"dropped by the kernel): {scraper.summary()}")
    finally:
        print("\n" + "\n".join(figures))
        assert daemon.stop() == 0


def test_sigterm_during_a_flood_flushes_and_exits_in_bounded_time(
        pair: NetnsPair, alertmanager: Alertmanager, make_daemon, tmp_path: Path) -> None:
    pcap = sample_round(5, tmp_path)
    flood = flood_pcap(tmp_path)
    alertmanager.stop()   # alerts are queued at shutdown, for an Alertmanager that is down
    # the deployment's flow timeouts: the flood's flows stay in the table until the end
    daemon = make_daemon(pair, *alertmanager_section(alertmanager), flows=None)
    daemon.start()
    replay = None
    try:
        pair.replay(pcap, pps=2000)
        wait_until(lambda: metric(scrape(daemon.port), "residency_alerts_queued") >= 12, 10,
                   "12 alerts queued")
        replay = Flood(pair, flood, loops=50)
        time.sleep(3)
        assert replay.proc.poll() is None, "the flood ended before SIGTERM"
        flushed_before = len(sample_records(daemon.final_records()))
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc is not None
        code = daemon.proc.wait(STOP_BOUND + 20)
        took = time.monotonic() - t0
    finally:
        if replay is not None:
            replay.stop()
    assert code == 0, daemon.log_text()[-3000:]
    events = daemon.log_events()
    stop = [e for e in events if e.get("event") == "stop"]
    assert stop, events[-5:]
    print(f"\nSIGTERM during a flood: exit 0 after {took:.2f} s "
          f"({stop[0]['packets']} packets, {stop[0]['records']} records)")
    assert took < STOP_BOUND

    # flushed: the sample's flows have final records although no timeout ended them
    finals = daemon.final_records()
    assert len(sample_records(finals)) == offline_flows(pcap) > flushed_before
    # the audit log is closed by its checkpoint, after the stop entry, and verifies
    audit_dir = daemon.workdir / "audit"
    entries = audit_entries(audit_dir)
    assert [e["type"] for e in entries[-2:]] == ["stop", "checkpoint"], entries[-2:]
    res = subprocess.run([sys.executable, "-m", "residency_monitor", "audit", "verify",
                          str(audit_dir)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    # Alertmanager was down throughout: every alert raised is counted, dropped from the
    # full queue or left in it at the end, in the log and in the audit log
    left = [int(m.group(1)) for e in events
            if (m := re.search(r": (\d+) alerts undelivered at shutdown", e.get("msg", "")))]
    dropped = max((int(m.group(1)) for e in events
                   if (m := re.search(r"\((\d+) dropped so far\)", e.get("msg", "")))),
                  default=0)
    raised = len(first_raised(audit_dir))
    print(f"{raised} alerts raised: {dropped} dropped from the full queue, {left} left "
          "undelivered at shutdown")
    assert len(left) == 1 and left[0] + dropped == raised
    assert any(e["type"] == "alert_failure" and "undelivered at shutdown" in e["data"]["error"]
               for e in entries)
    assert SHUTDOWN_ALERT_WAIT < STOP_BOUND
