"""The gateway daemon end to end: real interfaces, a real Prometheus, a real Alertmanager.

``residency-monitor run`` runs as a subprocess, capturing on one end of a
veth pair inside a network namespace of its own (``capture.netns``), while
tcpreplay replays the bundled sample onto the other end. It pushes alerts to
a real Alertmanager, which delivers them to a webhook in this process; a
real Prometheus scrapes it and evaluates the shipped alerting rules. Nothing
leaves the namespaces: the replayed frames carry a foreign destination MAC
and namespace B has no route anywhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alertmanager_fixture import (  # noqa: F401  (fixtures)
    Alertmanager,
    WebhookReceiver,
    alertmanager_factory_fixture,
    alertmanager_fixture,
    webhook_fixture,
)
from conftest import ROOT
from daemon_fixture import DaemonProcess
from daemon_fixture import scrape as _scrape
from daemon_fixture import wait_until as _wait
from netns_fixture import NetnsPair
from prometheus_fixture import free_port, running_prometheus, scrape_config

from residency_monitor.engine import Engine
from residency_monitor.geo import GeoConfig, Geolocator
from residency_monitor.policy import default_policy
from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay
from residency_monitor.residency import Residency
from residency_monitor.sample import SAMPLE_PATH

RULES = ROOT / "configs" / "prometheus" / "rules" / "residency.rules.yml"


def daemon_config(pair: NetnsPair, alertmanager_url: str,
                  policy: Path | None = None) -> list[str]:
    """Capture on B's end of the veth pair; short flow timeouts, so records come soon."""
    lines = [
        "capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
        "flows: {tcp_idle: 5, tcp_closed: 1, udp_idle: 2}",
        "alertmanager:", f"  urls: [{alertmanager_url}]", "  resend_interval: 2",
        "  labels: {site: e2e}",
    ]
    return lines + ([f"policy: {policy}"] if policy is not None else [])


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator:
    """Build RunningDaemons in this test's directory; kill any left running at teardown."""
    made: list[DaemonProcess] = []

    def make(pair: NetnsPair, alertmanager_url: str, **kwargs) -> DaemonProcess:
        daemon = DaemonProcess(tmp_path / f"daemon-{len(made)}",
                               daemon_config(pair, alertmanager_url, **kwargs))
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


def _replay_records() -> list[FlowRecord]:
    """What ``residency-monitor replay`` gives for the sample, with the same defaults."""
    recs: list[FlowRecord] = []
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    replay([SAMPLE_PATH], recs.append, engine=Engine(sink=recs.append, enrich=residency))
    return [r for r in recs if r.final]


def _comparable(r: dict) -> tuple:
    return (r["client_ip"], r["client_port"], r["server_ip"], r["server_port"], r["transport"],
            r["vlan"], r["packets_out"], r["packets_in"], r["bytes_out"], r["bytes_in"],
            r["app"], r["tls_version"], r["tls_sni"], r["tls_ja4"], r["dst_country"],
            r["verdict"], tuple(r["violations"]))


def test_daemon_end_to_end(pair, sample_replay, alertmanager: Alertmanager,
                           webhook: WebhookReceiver, make_daemon, tmp_path):
    daemon = make_daemon(pair, alertmanager.url)
    daemon.start()
    target = f"127.0.0.1:{daemon.port}"
    with running_prometheus(tmp_path / "prometheus", [scrape_config("residency", [target])],
                            rule_files=[RULES],
                            alertmanagers=[alertmanager.url.removeprefix("http://")]) as prom:
        started = time.time()
        pair.replay(sample_replay, pps=2000)
        replayed = time.time()

        # 1. alerts pushed by the daemon reach the webhook, one per violation identity
        expected = {("residency", "US"), ("residency", "CN"), ("residency", "HK"),
                    ("residency", "JP"), ("residency", "DE"), ("residency", "SG"),
                    ("plaintext", "SG"), ("plaintext", "US"), ("tls_version", "DE")}
        got = webhook.wait_for(lambda alerts: expected <= {
            (a.labels["rule"], a.labels["dst_country"]) for a in alerts
            if a.labels.get("alertname") == "ResidencyViolation"}, timeout=20)
        assert got, webhook.alerts()
        pushed = [a for a in webhook.alerts() if a.labels["alertname"] == "ResidencyViolation"]
        crm = next(a for a in pushed if a.labels["destination"] == "13.107.42.14")
        assert crm.labels["site"] == "e2e" and crm.labels["severity"] == "critical"
        assert crm.labels["zone"] == "default" and crm.labels["classification"] == "personal"
        assert "not permitted" in crm.annotations["explanation"]
        assert crm.annotations["server"] == "13.107.42.14:443"
        starts = _epoch(crm.starts_at)
        assert started - 1 <= starts <= replayed + 1   # the first packet's kernel time
        assert starts <= _epoch(crm.annotations["detected_at"]) <= replayed + 1
        # The first packet raised it; the handshake's refresh (a second later) adds the SNI.
        # Alertmanager does not notify annotation changes, but its API shows them.
        assert _wait(lambda: any(
            a["labels"].get("destination") == "13.107.42.14"
            and a["annotations"].get("sni") == "api.crm-saas-us.example"
            for a in alertmanager.get_alerts(active="true")), 10)
        first_alert = min(a.received_at for a in pushed)
        assert first_alert - started < 10

        # 2. Prometheus scrapes the daemon and evaluates the shipped rules: the counters
        # appear as the first replay's flows end; the second replay makes them increase
        assert prom.wait_for(f'up{{instance="{target}"}} == 1', timeout=20)
        assert prom.wait_for('sum(residency_violations_total{rule="residency"}) >= 9',
                             timeout=60)
        pair.replay(sample_replay, pps=2000)
        rule_alert = webhook.wait_for(lambda alerts: any(
            a.labels.get("alertname") == "ResidencyViolationsDetected"
            and a.labels.get("rule") == "plaintext" for a in alerts), timeout=60)
        assert rule_alert, [a.labels for a in webhook.alerts()]
        assert prom.wait_for('sum(residency_violations_total{rule="residency"}) >= 18',
                             timeout=60)

        # 3. SIGTERM: flows flushed, exit 0; live records equal replay's
        assert daemon.stop() == 0
    live = sorted(map(_comparable, daemon.final_records()))
    offline = sorted(_comparable(r.to_dict()) for r in _replay_records() * 2)  # two replays
    assert live == offline
    events = [e["event"] for e in daemon.log_events() if "event" in e]
    assert events[0] == "start" and events[-1] == "stop"


def test_alerts_survive_an_alertmanager_restart(pair, sample_replay,
                                                alertmanager: Alertmanager,
                                                webhook: WebhookReceiver, make_daemon):
    daemon = make_daemon(pair, alertmanager.url)
    daemon.start()
    try:
        alertmanager.stop()
        pair.replay(sample_replay, pps=2000)   # violations while Alertmanager is down
        time.sleep(2)
        alertmanager.start()
        want = 12  # the sample's violation identities: 9 residency, 2 plaintext, 1 tls_version
        assert webhook.wait_for(lambda alerts: len({
            (a.labels["rule"], a.labels["destination"]) for a in alerts
            if a.labels.get("alertname") == "ResidencyViolation"}) >= want, timeout=60), \
            daemon.log_text()
    finally:
        assert daemon.stop() == 0


def test_bad_policy_on_reload_keeps_the_running_one(pair, alertmanager: Alertmanager,
                                                    make_daemon, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text((ROOT / "configs" / "policies" / "macau-pdpa.yaml").read_text())
    daemon = make_daemon(pair, alertmanager.url, policy=policy)
    daemon.start()
    try:
        policy.write_text("policy: [this is not a policy\n")
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reloads = [e for e in daemon.log_events() if e.get("event") == "policy_reload"]
            if reloads:
                break
            time.sleep(0.1)
        assert reloads and reloads[0]["result"] == "failure"
        assert any(str(policy) in err for err in reloads[0]["errors"])
        metrics = _scrape(daemon.port)
        assert 'residency_policy_reloads_total{result="failure"} 1.0' in metrics
        assert 'name="macau-pdpa"' in metrics           # the running policy is still in force
    finally:
        assert daemon.stop() == 0


def test_startup_failures_have_distinct_exit_codes(tmp_path):
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("capture: {interfaces: 5}\n")
    run = [sys.executable, "-m", "residency_monitor", "run"]
    res = subprocess.run([*run, "--config", str(bad_config)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and f"{bad_config}:1" in res.stderr
    port = free_port()
    res = subprocess.run([*run, "--interface", "no-such-if0", "--web.listen-address",
                          f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "NOTIFY_SOCKET": ""})
    assert res.returncode == 3 and "no-such-if0" in res.stderr


def _epoch(rfc3339: str) -> float:
    import datetime as dt

    text = rfc3339.replace("Z", "+00:00")
    if "." in text:  # Go prints up to nanoseconds; Python takes microseconds
        head, frac = text.split(".", 1)
        digits = "".join(ch for ch in frac if ch.isdigit())
        tail = frac[len(digits):]
        text = f"{head}.{digits[:6]}{tail}"
    return dt.datetime.fromisoformat(text).timestamp()
