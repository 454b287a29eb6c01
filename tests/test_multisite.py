"""Many gateways behind one Prometheus and one Alertmanager, and a central Prometheus.

Three real daemons capture the same traffic on three veth pairs: two are an
HA pair at site ``hq`` (both see the office's link), one is at site
``branch``. They push to one real Alertmanager running the shipped routing
(configs/alertmanager/alertmanager.yml, timers shortened); a site Prometheus
scrapes all three with ``site`` and ``instance`` target labels and runs the
shipped rules; a central Prometheus federates from it with the shipped
configs/prometheus/central.yml (its targets pointed at the site server).

What a multi-site deployment relies on, checked here:
- alerts carry ``site`` but no gateway identity, so the HA pair's identical
  violations are one alert in Alertmanager, not two;
- the same violation at two sites is two alerts (their ``site`` differs) that
  the shipped ``group_by`` (no ``site``) delivers in one notification;
- every series keeps ``site`` and ``instance`` through federation, so the
  dashboard's site variable and the rules work on the central server.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import yaml
from alertmanager_fixture import Alertmanager, WebhookReceiver, webhook_fixture  # noqa: F401
from conftest import ROOT
from daemon_fixture import DaemonProcess
from netns_fixture import NetnsPair, netns_pair, write_pcap
from prometheus_fixture import find_binary, running_prometheus, scrape_config

from residency_monitor.capture.files import open_capture
from residency_monitor.sample import SAMPLE_PATH

CONFIGS = ROOT / "configs"
SAMPLE_VIOLATIONS = 12   # alert identities in the sample: (rule, destination)


def _alertmanager(workdir: Path, webhook: WebhookReceiver) -> Alertmanager:
    """The shipped Alertmanager routing, webhooks pointed here and timers shortened."""
    am = Alertmanager(workdir, webhook.url)
    text = (CONFIGS / "alertmanager" / "alertmanager.yml").read_text()
    text = re.sub(r"http://127\.0\.0\.1:5001/\S+", webhook.url, text)
    text = re.sub(r"group_wait: \S+", "group_wait: 1s", text)
    text = re.sub(r"group_interval: \S+", "group_interval: 2s", text)
    am.config_file.write_text(text)
    return am


def _daemon(workdir: Path, pair: NetnsPair, site: str, am_url: str) -> DaemonProcess:
    return DaemonProcess(workdir, [
        "capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
        "flows: {tcp_idle: 5, tcp_closed: 1, udp_idle: 2}",
        "alertmanager:", f"  urls: [{am_url}]", "  resend_interval: 2",
        f"  labels: {{site: {site}}}",
    ], name=f"{site}-{workdir.name}")


def _federation(site_prometheus: str) -> dict:
    """configs/prometheus/central.yml's federation job, aimed at the test's site server."""
    central = yaml.safe_load((CONFIGS / "prometheus" / "central.yml").read_text())
    (job,) = central["scrape_configs"]
    job["static_configs"] = [{"targets": [site_prometheus]}]
    job["scrape_interval"] = "1s"
    return job


def test_central_config_and_remote_write_example_pass_promtool(tmp_path):
    promtool = find_binary("promtool")
    central = CONFIGS / "prometheus" / "central.yml"
    check = subprocess.run([promtool, "check", "config", str(central)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # the commented remote_write example is valid configuration once uncommented
    lines = central.read_text().splitlines()
    start = lines.index("# remote_write:")
    block = [line[2:] for line in lines[start:] if line.startswith("# ")]
    site = yaml.safe_load((CONFIGS / "prometheus" / "prometheus.yml").read_text())
    site.update(yaml.safe_load("\n".join(block)))
    site["rule_files"] = [str(CONFIGS / "prometheus" / "rules" / "residency.rules.yml")]
    (tmp_path / "remote.pass").write_text("secret")
    site["remote_write"][-1]["basic_auth"]["password_file"] = str(tmp_path / "remote.pass")
    path = tmp_path / "site-with-remote-write.yml"
    path.write_text(json.dumps(site))
    check = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert len(site["remote_write"]) == 3


def test_two_sites_one_prometheus_one_alertmanager(webhook: WebhookReceiver, tmp_path):
    sample = tmp_path / "sample-replay.pcap"
    with open_capture(SAMPLE_PATH) as reader:
        write_pcap(sample, reader)     # foreign MACs: namespace B's kernel never answers
    am = _alertmanager(tmp_path / "alertmanager", webhook)
    am.start()
    with ExitStack() as stack:
        stack.callback(am.stop)
        pairs = [stack.enter_context(netns_pair()) for _ in range(3)]
        gateways = [("hq", "hq-gw1"), ("hq", "hq-gw2"), ("branch", "branch-gw1")]
        daemons = [_daemon(tmp_path / name, pair, site, am.url)
                   for (site, name), pair in zip(gateways, pairs, strict=True)]
        for d in daemons:
            stack.callback(d.kill)
            d.start()
        jobs = [scrape_config("residency-monitor", [])]
        jobs[0]["static_configs"] = [
            {"targets": [d.target], "labels": {"site": site, "instance": name}}
            for d, (site, name) in zip(daemons, gateways, strict=True)]
        rules = CONFIGS / "prometheus" / "rules" / "residency.rules.yml"
        prom = stack.enter_context(running_prometheus(
            tmp_path / "site-prometheus", jobs, rule_files=[rules],
            alertmanagers=[am.url.removeprefix("http://")]))
        central = stack.enter_context(running_prometheus(
            tmp_path / "central-prometheus", [_federation(prom.url.removeprefix("http://"))]))
        assert prom.wait_for('count(up{job="residency-monitor"} == 1) == 3', timeout=30)
        for pair in pairs:
            pair.replay(sample, pps=2000)

        # 1. the HA pair's violations are one alert each; the branch's are its own
        def identities(site: str) -> set[tuple[str, str]]:
            return {(a["labels"]["rule"], a["labels"]["destination"])
                    for a in am.get_alerts(active="true")
                    if a["labels"].get("alertname") == "ResidencyViolation"
                    and a["labels"].get("site") == site}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                len(identities("hq")) == len(identities("branch")) == SAMPLE_VIOLATIONS):
            time.sleep(0.5)
        pushed = [a for a in am.get_alerts(active="true")
                  if a["labels"].get("alertname") == "ResidencyViolation"]
        assert len(identities("hq")) == len(identities("branch")) == SAMPLE_VIOLATIONS
        assert len(pushed) == 2 * SAMPLE_VIOLATIONS        # not 3x: the HA pair merged
        assert not any("instance" in a["labels"] for a in pushed)

        # 2. one notification carries the same violation from both sites (group_by has no
        # site); each notification's alerts share rule, zone and country
        both = webhook.wait_for(lambda alerts: [
            n for _, n in webhook.notifications
            if {a["labels"].get("site") for a in n["alerts"]} == {"hq", "branch"}], timeout=30)
        for note in both:
            keys = {(a["labels"]["rule"], a["labels"]["zone"], a["labels"]["dst_country"])
                    for a in note["alerts"]}
            assert len(keys) == 1, keys

        # 3. Prometheus: per-site sums, each gateway its own series; the HA pair counted
        # twice here (two gateways saw it) while Alertmanager told once
        assert prom.wait_for('count(sum by (site) (residency_violations_total)) == 2',
                             timeout=60)
        assert prom.wait_for(
            'sum(residency_flows_total{site="hq"}) == 2 * sum(residency_flows_total'
            '{site="branch"})', timeout=60)
        by_instance = {labels["instance"] for labels, _ in
                       prom.query('sum by (instance) (residency_flows_total)')}
        assert by_instance == {"hq-gw1", "hq-gw2", "branch-gw1"}

        # 4. the central server has every site's series with their labels, and the
        # dashboard's site variable query answers there
        assert central.wait_for('count(up{job="residency-monitor"} == 1) == 3', timeout=60)
        assert central.wait_for(
            'count(count by (site, instance) (residency_flows_total)) == 3', timeout=60)
        sites = {labels["site"] for labels, _ in
                 central.query('count by (site) (residency_build_info)')}
        assert sites == {"hq", "branch"}
        site_sum = prom.value('sum(residency_flows_total{site="branch"})')
        assert central.wait_for(
            f'sum(residency_flows_total{{site="branch"}}) == {site_sum}', timeout=30)
        for d in daemons:
            assert d.stop() == 0

