#!/usr/bin/env python3
"""Alert latency: the daemon's own Alertmanager push against Prometheus's alerting rules.

What: the time from the *deciding packet* of a residency violation on the
wire (its kernel timestamp, which the daemon puts in every alert as the
``detected_at`` annotation and in every flow record as ``detected_at``) to
a notification for it at an Alertmanager webhook, along two paths measured
side by side in one run, on the same violations:

1. **push**: ``residency-monitor run`` judges the flow live and POSTs a
   ``ResidencyViolation`` alert to Alertmanager (group_wait 0s,
   group_interval 1s, one group per alert), which notifies a webhook in this
   process. Latency = the webhook's ``received_at`` (``time.time()``) minus
   the alert's ``detected_at`` (same host clock). Target: p99 under 1 s.
2. **rule**: a real Prometheus scrapes the same daemon and evaluates the
   shipped ``configs/prometheus/rules/residency.rules.yml``; its
   ``ResidencyViolationsDetected`` alert goes to a second Alertmanager with
   Alertmanager's default timers (group_wait 30s, group_interval 5m,
   repeat_interval 4h) and on to a second webhook. Matched to the
   violations by (rule, zone, dst_country); latency = received_at minus the
   earliest ``detected_at`` of the measured violations with that key.

Why: the daemon pushes alerts itself because the metrics-and-rules path is
slow by construction: a counter only moves when a flow's record is final
(the flow ended, plus the flow table's timeout: 30 s after FIN/RST, 300 s
idle for TCP by default), Prometheus only sees it at the next scrape, fires
at the next evaluation, and Alertmanager holds a new group for group_wait.
This script puts numbers on both, on a 2-core machine, with real components.

How (everything as tests/test_daemon_e2e.py does it): two fresh network
namespaces joined by a veth pair (tests/netns_fixture.py); the daemon runs
as a subprocess capturing ``vb`` in namespace B (``capture.netns``) while
tcpreplay sends frames out of ``va`` in namespace A. Frames carry a foreign
destination MAC and B has no route out, so nothing leaves the namespaces.

Traffic: the bundled sample (``residency_monitor/sample.py``: 334 packets,
26 flows, 12 violation identities: 9 residency, 2 plaintext, 1 tls_version)
replayed at ``--pps`` (default 2000, 0.17 s a round), once as a warm-up
(round 0) and then ``--rounds`` measured rounds ``--gap`` seconds apart. A
pushed alert's identity is (rule, zone, country, destination address), so
round *k* rewrites every external address's last byte to ``+k`` (the same
/24 or /64, so the same country) and every ephemeral port (>= 32768) to
``+k`` (checksums adjusted): each round's 12 violations are new alerts and
every flow is a new flow. An offline replay of each round's file gives the
expected violations, so losses show as "measured x of y".

Rule-path design (printed with the results):

- The shipped rule fires on ``increase(residency_violations_total[5m]) > 0``
  or on a series that is new *and* whose target was scraped 5 minutes ago.
  Every Prometheus here is younger than that, so only increases count, and
  a counter that appears already at its first value shows no increase. The
  warm-up round creates the counters; the measured rounds only begin once
  every Prometheus has scraped the warm-up's values, so the measured
  violations are increases. An alert that the warm-up itself fired (a
  counter that rose between two scrapes) is excluded and reported.
- The alert's identity is (rule, zone, country), and it keeps firing while
  the 5-minute increase is positive, so each key is notified once: the rule
  path yields one measurement per key (9 with the sample), the push path one
  per violation per round.
- Flow timeouts: the daemon the push path uses keeps the DEFAULT flow
  timeouts (a deployment's). A second daemon with the e2e test's short ones
  (tcp_closed 1 s, tcp_idle 5 s, udp_idle 2 s; it pushes nothing) captures
  the same frames and is scraped at the first interval, to show how much
  of the rule path is the flow timeout (``--no-short-timeouts`` skips it).
- Scrape and evaluation intervals: ``--rule-path-interval`` (repeatable;
  default 15s, as configs/prometheus/prometheus.yml, and 1m, Prometheus's
  own default), scrape_interval = evaluation_interval.

    python3 benchmarks/bench_alerts.py [--rounds N] [--skip-rules]

Run as root (namespaces). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from alertmanager_fixture import Alertmanager, ReceivedAlert, WebhookReceiver  # noqa: E402
from daemon_fixture import DaemonProcess  # noqa: E402
from netns_fixture import NetnsPair, netns_pair, write_pcap  # noqa: E402
from prometheus_fixture import Prometheus, scrape_config  # noqa: E402

from residency_monitor.capture.files import open_capture  # noqa: E402
from residency_monitor.engine import Engine  # noqa: E402
from residency_monitor.flows import FlowConfig  # noqa: E402
from residency_monitor.geo import GeoConfig, Geolocator  # noqa: E402
from residency_monitor.networks import NetworkSet  # noqa: E402
from residency_monitor.policy import default_policy  # noqa: E402
from residency_monitor.records import FlowRecord  # noqa: E402
from residency_monitor.replay import replay  # noqa: E402
from residency_monitor.residency import Residency  # noqa: E402
from residency_monitor.sample import SAMPLE_PATH  # noqa: E402

RULES = ROOT / "configs" / "prometheus" / "rules" / "residency.rules.yml"
PUSH_ALERT = "ResidencyViolation"
RULE_ALERT = "ResidencyViolationsDetected"
JOB = "residency-monitor"
SHORT_FLOWS = {"tcp_idle": 5, "tcp_closed": 1, "udp_idle": 2}   # tests/test_daemon_e2e.py's
AM_DEFAULTS = {"group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h"}
GROUP_WAIT_S = 30.0
SWEEP_S = 5.0          # the flow table's expiry sweep runs every 5 s of packet time
EPHEMERAL = 32768
MAX_ROUNDS = 100

Key = tuple[str, str, str]             # (rule, zone, country): the rule alert's identity
Identity = tuple[str, str, str, str]   # (rule, zone, country, destination): a pushed alert's


# ----------------------------------------------------------------------------- traffic

def _csum_adjust(csum: int, old: int, new: int) -> int:
    """RFC 1624 incremental update of a ones'-complement checksum for one 16-bit word."""
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def shift_frame(frame: bytes, k: int, internal: NetworkSet) -> bytes:
    """``frame`` with external addresses' last byte and ephemeral ports moved by ``k``.

    IPv4 header and TCP/UDP/ICMPv6 checksums are adjusted incrementally.
    Frames that are not IP over Ethernet (optionally VLAN-tagged) pass unchanged.
    """
    if k == 0 or len(frame) < 14:
        return frame
    b = bytearray(frame)
    off, ethertype = 12, int.from_bytes(b[12:14], "big")
    while ethertype in (0x8100, 0x88A8) and len(b) >= off + 6:
        off += 4
        ethertype = int.from_bytes(b[off:off + 2], "big")
    off += 2
    ip_csum: int | None = None
    if ethertype == 0x0800 and len(b) >= off + 20:
        ihl, proto, alen = (b[off] & 0x0F) * 4, b[off + 9], 4
        addrs = (off + 12, off + 16)
        first_fragment = int.from_bytes(b[off + 6:off + 8], "big") & 0x1FFF == 0
        l4 = off + ihl if first_fragment else None
        ip_csum = off + 10
    elif ethertype == 0x86DD and len(b) >= off + 40:
        proto, alen, addrs, l4 = b[off + 6], 16, (off + 8, off + 24), off + 40
    else:
        return frame
    l4_csum = {6: 16, 17: 6, 58: 2}.get(proto) if l4 is not None else None
    if proto == 58 and alen == 4:
        l4_csum = None
    if l4 is not None and l4_csum is not None and len(b) < l4 + l4_csum + 2:
        l4, l4_csum = None, None                      # truncated: leave the transport alone
    udp4_no_csum = (proto == 17 and alen == 4 and l4 is not None
                    and l4_csum is not None and b[l4 + 6:l4 + 8] == b"\0\0")
    changes: list[tuple[int, int, bool]] = []         # (offset of word, new value, pseudo-hdr)
    for a in addrs:
        if bytes(b[a:a + alen]) in internal:
            continue
        if b[a + alen - 1] + k > 254:
            raise ValueError(f"cannot shift address byte {b[a + alen - 1]} by {k}")
        word = int.from_bytes(b[a + alen - 2:a + alen], "big")
        changes.append((a + alen - 2, word + k, True))
    if l4 is not None and proto in (6, 17):
        for p in (l4, l4 + 2):
            port = int.from_bytes(b[p:p + 2], "big")
            if port >= EPHEMERAL:
                new = port + k if port + k <= 0xFFFF else port + k - EPHEMERAL
                changes.append((p, new, False))
    for pos, new, in_ip_header in changes:
        old = int.from_bytes(b[pos:pos + 2], "big")
        if in_ip_header and ip_csum is not None:
            b[ip_csum:ip_csum + 2] = _csum_adjust(
                int.from_bytes(b[ip_csum:ip_csum + 2], "big"), old, new).to_bytes(2, "big")
        if l4 is not None and l4_csum is not None and not udp4_no_csum:
            at = l4 + l4_csum
            c = _csum_adjust(int.from_bytes(b[at:at + 2], "big"), old, new)
            if proto == 17 and c == 0:
                c = 0xFFFF
            b[at:at + 2] = c.to_bytes(2, "big")
        b[pos:pos + 2] = new.to_bytes(2, "big")
    return bytes(b)


@dataclass
class Round:
    """One replay file and what an offline replay of it says it must produce."""

    index: int
    pcap: Path
    records: list[FlowRecord] = field(default_factory=list)

    def violations(self, closed_only: bool = False) -> list[tuple[Identity, FlowRecord]]:
        """(identity, record) per violated rule of each final record.

        ``closed_only``: flows that ended with FIN or RST, whose records a daemon with
        default timeouts writes 30 s later (the others wait for the 300 s idle timeout).
        """
        out = []
        for r in self.records:
            if not r.final or r.verdict != "violation":
                continue
            if closed_only and r.end_reason not in ("fin", "rst"):
                continue
            for rule in r.violations:
                out.append(((rule, r.zone or "default", r.dst_country or "unlocated",
                             r.server_ip), r))
        return out


def make_rounds(n: int, workdir: Path) -> list[Round]:
    """Round 0 (warm-up) is the sample itself; round k shifts it by k (see the docstring)."""
    with open_capture(SAMPLE_PATH) as reader:
        frames = list(reader)
    internal = NetworkSet()
    rounds = []
    for k in range(n + 1):
        path = workdir / f"round-{k:03d}.pcap"
        write_pcap(path, [(ts, lt, shift_frame(fr, k, internal), wl)
                          for ts, lt, fr, wl in frames])
        rnd = Round(k, path)
        residency = Residency(default_policy(), Geolocator(GeoConfig()))
        replay([path], rnd.records.append,
               engine=Engine(sink=rnd.records.append, enrich=residency))
        rounds.append(rnd)
    return rounds


# ----------------------------------------------------------------------------- daemon

class BenchDaemon(DaemonProcess):
    """The daemon of tests/daemon_fixture.py, with what the rule paths need to know."""

    def __init__(self, name: str, workdir: Path, pair: NetnsPair,
                 alertmanager_urls: Sequence[str] = (),
                 flows: dict[str, int] | None = None) -> None:
        lines = ["capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}"]
        if flows:
            lines.append("flows: {" + ", ".join(f"{k}: {v}" for k, v in flows.items()) + "}")
        if alertmanager_urls:
            lines += ["alertmanager:", f"  urls: [{', '.join(alertmanager_urls)}]"]
        super().__init__(workdir, lines, name=f"daemon {name}")
        self.default_timeouts = not flows
        self.tcp_closed = float((flows or {}).get("tcp_closed", FlowConfig().tcp_closed))

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (open flows are flushed to the records); killed if it hangs."""
        try:
            return super().stop(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=5) as resp:
            return resp.read().decode()


@dataclass
class RulePath:
    """One Prometheus (its interval) scraping one daemon, its Alertmanager and webhook."""

    name: str
    interval: str
    daemon: BenchDaemon
    hook: WebhookReceiver
    alertmanager: Alertmanager
    prometheus: Prometheus

    @property
    def interval_s(self) -> float:
        return parse_duration(self.interval)

    def expected_range(self) -> tuple[float, float]:
        """Flow end + tcp_closed + sweep + scrape phase + evaluation phase + group_wait."""
        low = self.daemon.tcp_closed + GROUP_WAIT_S
        return low, low + SWEEP_S + 2 * self.interval_s


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a Prometheus duration: {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def duration_arg(text: str) -> str:
    parse_duration(text)
    return text


# ----------------------------------------------------------------------------- helpers

def epoch(rfc3339: str) -> float:
    """RFC 3339 (Go prints up to nanoseconds, Python takes microseconds) to epoch seconds."""
    text = rfc3339.replace("Z", "+00:00")
    if "." in text:
        head, frac = text.split(".", 1)
        digits = "".join(ch for ch in frac if ch.isdigit())
        text = f"{head}.{digits[:6]}{frac[len(digits):]}"
    return dt.datetime.fromisoformat(text).timestamp()


def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def first_firing(alerts: Iterable[ReceivedAlert], alertname: str,
                 key: Callable[[ReceivedAlert], tuple]) -> dict[tuple, ReceivedAlert]:
    """The first firing notification of each alert identity."""
    out: dict[tuple, ReceivedAlert] = {}
    for a in alerts:
        if a.labels.get("alertname") == alertname and a.status == "firing":
            out.setdefault(key(a), a)
    return out


def push_identity(a: ReceivedAlert) -> Identity:
    return (a.labels["rule"], a.labels["zone"], a.labels["dst_country"], a.labels["destination"])


def rule_key(a: ReceivedAlert) -> Key:
    return (a.labels.get("rule", ""), a.labels.get("zone", ""), a.labels.get("dst_country", ""))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def stats_line(values: Sequence[float]) -> str:
    if not values:
        return "none"
    return (f"median {fmt_s(statistics.median(values))}, p90 {fmt_s(percentile(values, 0.9))}, "
            f"p99 {fmt_s(percentile(values, 0.99))}, max {fmt_s(max(values))}, "
            f"min {fmt_s(min(values))}")


def tool_version(*cmd: str) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = (res.stdout + res.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine_info() -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"CPU: {cpu}, {os.cpu_count()} cores; load average {load}",
            f"Python {platform.python_version()} ({platform.python_implementation()}), "
            f"kernel {platform.release()}",
            f"{tool_version('prometheus', '--version')}",
            f"{tool_version('prometheus-alertmanager', '--version')}",
            f"{tool_version('tcpreplay', '--version')}"]


def prom_counts(prom: Prometheus) -> dict[Key, float]:
    return {(m.get("rule", ""), m.get("network_zone", ""), m.get("country", "")): v
            for m, v in prom.query("residency_violations_total")}


@dataclass
class Histogram:
    """A histogram read from an exposition text (summed over label sets)."""

    count: int
    mean: float
    under: int     # observations <= ``le``
    le: float


def read_histogram(metrics_text: str, name: str, le: float) -> Histogram | None:
    total = count = under = 0.0
    bucket = re.compile(rf'^{name}_bucket{{(?:.*,)?le="([^"]+)"}} (\S+)$')
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
        elif (m := bucket.match(line)) and m.group(1) != "+Inf" and float(m.group(1)) == le:
            under += float(m.group(2))
    return Histogram(int(count), total / count, int(under), le) if count else None


# ----------------------------------------------------------------------------- the run

def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20,
                    help=f"measured rounds after the warm-up (1-{MAX_ROUNDS}; default 20)")
    ap.add_argument("--skip-rules", action="store_true",
                    help="measure the push path only (no Prometheus)")
    ap.add_argument("--rule-path-interval", type=duration_arg, action="append",
                    help="Prometheus scrape and evaluation interval of a rule path "
                         "(repeatable; default: 15s and 1m)")
    ap.add_argument("--no-short-timeouts", action="store_true",
                    help="skip the second daemon with the e2e test's short flow timeouts")
    ap.add_argument("--pps", type=int, default=2000, help="tcpreplay rate (default 2000)")
    ap.add_argument("--gap", type=float, default=2.0,
                    help="seconds between measured rounds (default 2)")
    args = ap.parse_args()
    if not 1 <= args.rounds <= MAX_ROUNDS:
        ap.error(f"--rounds must be 1-{MAX_ROUNDS}")
    intervals: list[str] = args.rule_path_interval or ["15s", "1m"]
    if os.geteuid() != 0:
        sys.exit("bench_alerts.py creates network namespaces: run it as root")
    for tool in ("prometheus-alertmanager", "tcpreplay", "ip") + (
            () if args.skip_rules else ("prometheus", "promtool")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install -y prometheus prometheus-alertmanager "
                     "tcpreplay iproute2")

    print("machine:")
    for line in machine_info():
        print(f"  {line}")
    t_begin = time.monotonic()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-alerts-")))
        rounds = make_rounds(args.rounds, tmp)
        pair = stack.enter_context(netns_pair())
        run(args, intervals, rounds, pair, tmp, stack)
    print(f"\ntotal run time {time.monotonic() - t_begin:.0f} s")


def run(args: argparse.Namespace, intervals: list[str], rounds: list[Round],
        pair: NetnsPair, tmp: Path, stack: ExitStack) -> None:
    warmup, measured = rounds[0], rounds[1:]
    per_round = len(warmup.violations())
    keys = sorted({ident[:3] for ident, _r in warmup.violations()})
    for rnd in measured:
        if sorted({ident[:3] for ident, _r in rnd.violations()}) != keys:
            print(f"  note: round {rnd.index}'s shifted addresses changed its violations' "
                  "countries; its rule-path keys differ from the warm-up's")
    round_of = {ident[3]: rnd.index for rnd in rounds for ident, _r in rnd.violations()}

    # -- components
    push_hook = WebhookReceiver()
    stack.callback(push_hook.close)
    push_am = Alertmanager(tmp / "am-push", push_hook.url, group_wait="0s",
                           group_interval="1s")
    stack.callback(push_am.stop)
    push_am.start()
    daemon = BenchDaemon("default", tmp / "daemon-default", pair, [push_am.url])
    stack.callback(daemon.stop)
    daemon.start()
    paths: list[RulePath] = []
    if not args.skip_rules:
        plan = [(f"rule {iv}/{iv}, default flow timeouts", iv, daemon) for iv in intervals]
        if not args.no_short_timeouts:
            short = BenchDaemon("short", tmp / "daemon-short", pair, flows=SHORT_FLOWS)
            stack.callback(short.stop)
            short.start()
            plan.append((f"rule {intervals[0]}/{intervals[0]}, short flow timeouts",
                         intervals[0], short))
        for i, (name, iv, d) in enumerate(plan):
            hook = WebhookReceiver()
            stack.callback(hook.close)
            am = Alertmanager(tmp / f"am-rule-{i}", hook.url, **AM_DEFAULTS)
            stack.callback(am.stop)
            am.start()
            prom = Prometheus(tmp / f"prometheus-{i}", [scrape_config(JOB, [d.target])],
                              rule_files=[RULES],
                              alertmanagers=[am.url.removeprefix("http://")], interval=iv)
            stack.callback(prom.stop)
            prom.start()
            paths.append(RulePath(name, iv, d, hook, am, prom))

    print(f"\nsetup: sample {SAMPLE_PATH.name} ({per_round} violations a round, "
          f"{len(keys)} (rule, zone, country) keys), replayed at {args.pps} pps; "
          f"1 warm-up + {args.rounds} measured rounds, {args.gap:g} s apart")
    print("  push: daemon (default flow timeouts) -> Alertmanager (group_wait 0s, "
          "group_interval 1s) -> webhook")
    for p in paths:
        print(f"  {p.name}: Prometheus scrape_interval = evaluation_interval = {p.interval} "
              f"-> Alertmanager (group_wait 30s, group_interval 5m, repeat_interval 4h) "
              f"-> webhook; daemon tcp_closed {p.daemon.tcp_closed:g} s")

    for p in paths:
        p.prometheus.wait_for(f'up{{job="{JOB}"}} == 1', timeout=p.interval_s + 30)

    # -- warm-up: creates the counters (and the first, cold, pushed alerts)
    print("\nwarm-up round ...", flush=True)
    pair.replay(warmup.pcap, pps=args.pps)
    if paths:
        settle(paths, warmup)

    # -- measured rounds
    measured_start = time.time()
    print(f"measured rounds ({args.rounds}) ...", flush=True)
    for i, rnd in enumerate(measured):
        if i:
            time.sleep(args.gap)
        pair.replay(rnd.pcap, pps=args.pps)
    replays_done = time.time()

    expected_push = {ident for rnd in rounds for ident, _r in rnd.violations()}
    wait_until(lambda: expected_push <= set(
        first_firing(push_hook.alerts(), PUSH_ALERT, push_identity)), timeout=30)
    if paths:
        print("waiting for the rule paths ...", flush=True)
        budget = max(p.expected_range()[1] for p in paths) + 60
        wait_until(lambda: all(set(keys) <= set(first_firing(
            p.hook.alerts(), RULE_ALERT, rule_key)) for p in paths),
            timeout=max(0.0, measured_start + budget - time.time()), poll=1)
    metrics = daemon.metrics_text()
    delivery = read_histogram(metrics, "residency_alert_delivery_seconds", 0.1)
    detection = read_histogram(metrics, "residency_detection_latency_seconds", 0.1)
    daemon.stop()
    for p in paths:
        p.daemon.stop()

    report(args, rounds, round_of, push_hook, paths, measured_start, replays_done,
           delivery, detection)


def settle(paths: list[RulePath], warmup: Round) -> None:
    """Wait until every Prometheus holds the warm-up's counter values (see the docstring)."""
    print("  waiting until every Prometheus has scraped the warm-up's counters "
          "(flow timeout + scrape interval) ...", flush=True)
    for p in paths:
        target: dict[Key, int] = {}
        for (rule, zone, country, _dst), _r in warmup.violations(
                closed_only=p.daemon.default_timeouts):
            target[rule, zone, country] = target.get((rule, zone, country), 0) + 1
        ok = wait_until(partial(_scraped, p.prometheus, target),
                        timeout=p.daemon.tcp_closed + SWEEP_S + p.interval_s + 60, poll=1)
        if not ok:
            print(f"  note: {p.name}: warm-up counters incomplete: "
                  f"{prom_counts(p.prometheus)} (wanted {target})")


def _scraped(prom: Prometheus, target: dict[Key, int]) -> bool:
    counts = prom_counts(prom)
    return all(counts.get(k, 0) >= n for k, n in target.items())


def report(args: argparse.Namespace, rounds: list[Round], round_of: dict[str, int],
           push_hook: WebhookReceiver, paths: list[RulePath], measured_start: float,
           replays_done: float, delivery: Histogram | None,
           detection: Histogram | None) -> None:
    warmup, measured = rounds[0], rounds[1:]
    pushed = first_firing(push_hook.alerts(), PUSH_ALERT, push_identity)
    latency: dict[int, list[float]] = {}
    for ident, a in pushed.items():
        rnd = round_of.get(ident[3])
        if rnd is None:
            continue
        latency.setdefault(rnd, []).append(a.received_at - epoch(a.annotations["detected_at"]))
    push_all = [x for r, xs in latency.items() if r > 0 for x in xs]
    expected_measured = sum(len(r.violations()) for r in measured)
    print("\npush path (deciding packet -> webhook):")
    print(f"  warm-up round (cold): {len(latency.get(0, []))} of {len(warmup.violations())}: "
          f"{stats_line(latency.get(0, []))}")
    print(f"  measured rounds: {len(push_all)} of {expected_measured} alerts: "
          f"{stats_line(push_all)}")
    if delivery:
        print(f"  the daemon's own residency_alert_delivery_seconds (deciding packet -> "
              f"Alertmanager accepted): {delivery.count} observations, mean "
              f"{fmt_s(delivery.mean)}, {delivery.under} of them <= {fmt_s(delivery.le)}")
    if detection:
        print(f"  the daemon's residency_detection_latency_seconds (first packet -> live "
              f"verdict, packet time): {detection.count} verdicts, mean {fmt_s(detection.mean)}, "
              f"{detection.under} of them <= {fmt_s(detection.le)}")
    p99_ok = push_all and percentile(push_all, 0.99) < 1.0
    print(f"  target p99 < 1 s: {'met' if p99_ok else 'NOT met'}")

    rows: list[tuple[str, list[float]]] = [("push (AM group_wait 0s)", push_all)]
    for p in paths:
        records = p.daemon.final_records()
        first_detect: dict[Key, float] = {}
        for r in records:
            if r["verdict"] != "violation" or round_of.get(r["server_ip"], 0) == 0:
                continue
            for rule in r["violations"]:
                k = (rule, r["zone"] or "default", r["dst_country"] or "unlocated")
                first_detect[k] = min(first_detect.get(k, float("inf")), r["detected_at"])
        fired = first_firing(p.hook.alerts(), RULE_ALERT, rule_key)
        vals, to_prom, excluded, details = [], [], [], []
        for k in sorted(first_detect):
            a = fired.get(k)
            if a is None:
                details.append(f"{'/'.join(k)}: no alert")
                continue
            if epoch(a.starts_at) < measured_start:
                excluded.append("/".join(k))
                continue
            vals.append(a.received_at - first_detect[k])
            to_prom.append(epoch(a.starts_at) - first_detect[k])
            details.append(f"{'/'.join(k)} {vals[-1]:.1f}")
        lo, hi = p.expected_range()
        print(f"\n{p.name} (deciding packet -> webhook), matched by rule/zone/dst_country:")
        print(f"  {len(vals)} of {len(first_detect)} keys: {stats_line(vals)}")
        print(f"  of which deciding packet -> Prometheus firing (the alert's startsAt): "
              f"{stats_line(to_prom)}")
        print(f"  expected {lo:.0f}-{hi:.0f} s: tcp_closed {p.daemon.tcp_closed:g} s + sweep "
              f"<= {SWEEP_S:g} s + scrape <= {p.interval} + evaluation <= {p.interval} + "
              f"group_wait 30 s")
        print(f"  per key (s): {'; '.join(details)}")
        if excluded:
            print(f"  excluded, fired by the warm-up's own increase: {', '.join(excluded)}")
        rows.append((p.name, vals))

    push_median = statistics.median(push_all) if push_all else None
    print("\n| path | alerts | median | p99 | max | rule/push (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, vals in rows:
        if not vals:
            print(f"| {name} | 0 | - | - | - | - |")
            continue
        med = statistics.median(vals)
        ratio = "1" if vals is push_all else (
            f"{med / push_median:,.0f}x" if push_median else "-")
        print(f"| {name} | {len(vals)} | {fmt_s(med)} | {fmt_s(percentile(vals, 0.99))} | "
              f"{fmt_s(max(vals))} | {ratio} |")
    print(f"\nreplays took {replays_done - measured_start:.1f} s; push alerts are per violation "
          f"and round, rule alerts once per (rule, zone, country) while the 5-minute increase "
          f"stays positive")


if __name__ == "__main__":
    main()
