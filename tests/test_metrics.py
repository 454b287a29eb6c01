"""Metrics and the exporter: values from the bundled sample, bounded labels, a real Prometheus.

Unit tests feed flow records from a replay of the bundled sample into a
fresh registry and read samples back; end-to-end tests serve that registry
over HTTP, HTTPS and mutual TLS and let a real Prometheus scrape it.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import ipaddress
import logging
import platform
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest
from certs import certificates
from conftest import ROOT
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_fixture import find_binary, running_prometheus, scrape_config

from residency_monitor.engine import Engine, EngineConfig
from residency_monitor.exporter import DEFAULT_ADDRESS, DEFAULT_PORT, Exporter, _tls_context
from residency_monitor.flows import FlowConfig
from residency_monitor.geo import GeoConfig, Geolocator
from residency_monitor.metrics import METRIC_NAMES, Metrics
from residency_monitor.policy import default_policy
from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay
from residency_monitor.residency import Residency
from residency_monitor.sample import SAMPLE_PATH
from residency_monitor.summary import ComplianceSummary

BUILD_DBS = ROOT / "geo" / "build_test_dbs.py"
ALERT_SOURCE_FAMILIES = {"residency_alerts_sent", "residency_alerts_failed",
                         "residency_alerts_queued", "residency_alerts_dropped",
                         "residency_alerts_evicted",
                         "residency_alert_retries"}
NOW = 1_800_000_000.0


def _replay(config: EngineConfig | None = None) -> tuple[list[FlowRecord], Engine]:
    recs: list[FlowRecord] = []
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    engine = Engine(config, sink=recs.append, enrich=residency)
    replay([SAMPLE_PATH], recs.append, engine=engine)
    return recs, engine


@pytest.fixture(scope="module")
def sample() -> tuple[list[FlowRecord], Engine]:
    return _replay()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry) -> Metrics:
    return Metrics(registry, build_version="9.9.9", clock=lambda: NOW)


def _fed(metrics: Metrics, records: list[FlowRecord]) -> Metrics:
    for r in records:
        metrics.observe_record(r)
    return metrics


def _value(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value
            for fam in registry.collect() for s in fam.samples if s.name == name}


# ------------------------------------------------------------------------ flow records

def test_sample_verdicts_and_violations(registry, metrics, sample):
    _fed(metrics, sample[0])
    flows = {v: _value(registry, "residency_flows_total", verdict=v)
             for v in ("compliant", "violation", "exempt", "not_evaluated")}
    assert flows == {"compliant": 2, "violation": 9, "exempt": 0, "not_evaluated": 15}
    v = "residency_violations_total"
    assert _value(registry, v, rule="residency", network_zone="default", country="US") == 3
    assert _value(registry, v, rule="residency", network_zone="default", country="DE") == 2
    assert _value(registry, v, rule="tls_version", network_zone="default", country="DE") == 1
    assert _value(registry, v, rule="plaintext", network_zone="default", country="SG") == 1
    by_rule: Counter[str] = Counter()
    for labels, value in _samples(registry, v).items():
        by_rule[dict(labels)["rule"]] += int(value)
    assert by_rule == {"residency": 9, "plaintext": 2, "tls_version": 1}
    assert _samples(registry, "residency_exemptions_total") == {}


def test_sample_handshakes_and_located_flows(registry, metrics, sample):
    _fed(metrics, sample[0])
    tls = {dict(k)["version"]: v for k, v in
           _samples(registry, "residency_tls_handshakes_total").items()}
    assert tls == {"TLS 1.3": 7, "TLS 1.2": 1, "TLS 1.0": 1}
    # the 11 judged outbound flows, all located by the embedded registry data
    assert _samples(registry, "residency_flows_located_total") == {(("source", "rir"),): 11}


def test_bytes_match_the_records_and_the_compliance_summary(registry, metrics, sample):
    recs = sample[0]
    _fed(metrics, recs)
    for verdict in ("compliant", "violation", "not_evaluated"):
        mine = [r for r in recs if r.verdict == verdict]
        assert _value(registry, "residency_sent_bytes_total", verdict=verdict) == \
            sum(r.bytes_out for r in mine)
        assert _value(registry, "residency_received_bytes_total", verdict=verdict) == \
            sum(r.bytes_in for r in mine)
    summary = ComplianceSummary()
    for r in recs:
        summary.add(r)
    assert summary.outbound_bytes > 0
    assert _value(registry, "residency_outbound_bytes_total") == summary.outbound_bytes
    assert _value(registry, "residency_outbound_located_bytes_total") == summary.located_bytes
    assert _value(registry, "residency_outbound_classified_bytes_total") == summary.judged_bytes
    assert _value(registry, "residency_visibility_ratio") == pytest.approx(
        summary.judged_bytes / summary.outbound_bytes)
    # the data-flow map: what each zone sent to each country, from the records themselves
    judged = [r for r in recs if r.verdict in ("compliant", "violation", "exempt")]
    expected: Counter[tuple[str, str]] = Counter()
    for r in judged:
        expected[(r.zone or "none", r.dst_country or "unlocated")] += r.bytes_out
    got = _samples(registry, "residency_outbound_sent_bytes_total")
    assert {(dict(labels)["network_zone"], dict(labels)["country"]): v
            for labels, v in got.items()} == expected and len(expected) >= 3


def test_visibility_counts_unlocated_and_unfinished_handshakes(registry, metrics, sample):
    base = next(r for r in sample[0] if r.verdict == "compliant")
    unlocated = dataclasses.replace(base, client_port=1, dst_country=None,
                                    dst_country_source=None, verdict="violation",
                                    violations=["geo_unknown"])
    stalled = dataclasses.replace(base, client_port=2, verdict="violation",
                                  violations=["no_handshake"])
    for r in (base, unlocated, stalled):
        metrics.observe_record(r)
    size = base.bytes_out + base.bytes_in
    assert _value(registry, "residency_outbound_bytes_total") == 3 * size
    assert _value(registry, "residency_outbound_located_bytes_total") == 2 * size
    assert _value(registry, "residency_outbound_classified_bytes_total") == size
    assert _value(registry, "residency_visibility_ratio") == pytest.approx(1 / 3)
    assert _value(registry, "residency_violations_total", rule="geo_unknown",
                  network_zone="default", country="unlocated") == 1


def test_interim_records_never_double_count(sample):
    """A 5 s active timeout turns the sample's longer flows into interim + final records."""
    interim_recs, _ = _replay(EngineConfig(flows=FlowConfig(active=5.0)))
    assert any(not r.final for r in interim_recs), "the sample should have interim records"
    plain, with_interim = CollectorRegistry(), CollectorRegistry()
    _fed(Metrics(plain, build_version="x"), sample[0])
    _fed(Metrics(with_interim, build_version="x"), interim_recs)
    for name in ("residency_flows_total", "residency_sent_bytes_total",
                 "residency_received_bytes_total", "residency_violations_total",
                 "residency_tls_handshakes_total", "residency_outbound_bytes_total",
                 "residency_flows_located_total"):
        assert _samples(with_interim, name) == _samples(plain, name), name


def test_interim_bytes_are_counted_when_they_arrive(registry, metrics, sample):
    final = next(r for r in sample[0] if r.verdict == "violation" and r.bytes_out > 1000)
    interim = dataclasses.replace(final, final=False, end_reason="active_timeout",
                                  bytes_out=1000, bytes_in=10)
    metrics.observe_record(interim)
    assert _value(registry, "residency_sent_bytes_total", verdict="violation") == 1000
    assert _value(registry, "residency_flows_total", verdict="violation") == 0
    assert _samples(registry, "residency_violations_total") == {}
    metrics.observe_record(interim)               # a repeated interim adds nothing
    assert _value(registry, "residency_sent_bytes_total", verdict="violation") == 1000
    metrics.observe_record(final)
    assert _value(registry, "residency_sent_bytes_total", verdict="violation") == final.bytes_out
    assert _value(registry, "residency_received_bytes_total", verdict="violation") == \
        final.bytes_in
    assert _value(registry, "residency_flows_total", verdict="violation") == 1


def test_label_values_are_bounded(registry, metrics, sample):
    rec = sample[0][1]
    odd = dataclasses.replace(rec, tls_version="0x7a7a", dst_country="not-a-code",
                              verdict=None, violations=["made_up_rule"])
    metrics.observe_record(odd)
    assert _value(registry, "residency_flows_total", verdict="none") == 1
    assert _value(registry, "residency_tls_handshakes_total", version="other") == 1
    assert _value(registry, "residency_violations_total", rule="other",
                  network_zone=rec.zone or "none", country="other") == 1
    draft = dataclasses.replace(rec, tls_version="TLS 1.3 draft 23")
    metrics.observe_record(draft)
    assert _value(registry, "residency_tls_handshakes_total", version="TLS 1.3 draft") == 1


# ------------------------------------------------------------------------ the rest of the API

def test_latency_histograms(registry, metrics):
    for s in (0.0005, 0.0125, 61.0):
        metrics.observe_verdict(s)
    h = "residency_detection_latency_seconds"
    assert _value(registry, f"{h}_bucket", le="0.001") == 1
    assert _value(registry, f"{h}_bucket", le="0.025") == 2
    assert _value(registry, f"{h}_bucket", le="60.0") == 2
    assert _value(registry, f"{h}_bucket", le="+Inf") == 3
    assert _value(registry, f"{h}_count") == 3
    assert _value(registry, f"{h}_sum") == pytest.approx(61.013)
    metrics.observe_alert_delivered(0.02)
    assert _value(registry, "residency_alert_delivery_seconds_bucket", le="0.025") == 1
    assert _value(registry, "residency_alert_delivery_seconds_bucket", le="0.01") == 0


def test_policy_info_survives_a_failed_reload(registry, metrics):
    policy = default_policy()
    assert _value(registry, "residency_policy_reloads_total", result="success") == 0
    metrics.policy_loaded(policy, "success")
    info = {"name": "macau-pdpa", "sha256": policy.sha256, "as_of": policy.as_of.isoformat()}
    assert _value(registry, "residency_policy_info", **info) == 1
    assert _value(registry, "residency_policy_last_reload_timestamp_seconds") == NOW
    metrics.policy_loaded(None, "failure", now=NOW + 60)
    assert _value(registry, "residency_policy_info", **info) == 1
    assert _value(registry, "residency_policy_last_reload_successful") == 0
    assert _value(registry, "residency_policy_last_reload_timestamp_seconds") == NOW
    assert _value(registry, "residency_policy_reloads_total", result="failure") == 1
    assert _value(registry, "residency_policy_reloads_total", result="success") == 1
    assert len(_samples(registry, "residency_policy_info")) == 1
    with pytest.raises(ValueError, match="success"):
        metrics.policy_loaded(policy, "ok")
    assert metrics.landing()["policy"] == "macau-pdpa"


def test_engine_capture_and_alert_sources(registry, metrics):
    recs: list[FlowRecord] = []
    engine = Engine(sink=recs.append)
    replay([SAMPLE_PATH], recs.append, engine=engine)
    engine.frame(1.0, 1, b"\x00" * 10)           # an Ethernet frame too short to decode
    engine.frame(1.0, 999, b"abc")               # a link type nobody knows

    class Alerts:
        def stats(self) -> dict[str, Any]:
            return {"sent": 5, "failed": {"timeout": 2, "http_5xx": 1}, "queued": 3,
                    "dropped": 1, "evicted": 6, "retries": 4}

    metrics.attach(engine=engine, capture_stats=lambda: {"eth1": (1000, 7)}, alerts=Alerts())
    assert _value(registry, "residency_packets_processed_total") == 336
    assert _value(registry, "residency_active_flows") == 0
    assert _value(registry, "residency_packets_malformed_total", kind="truncated") == 1
    assert _value(registry, "residency_packets_malformed_total", kind="unknown_link") == 1
    assert _value(registry, "residency_packets_malformed_total", kind="malformed") == 0
    assert _value(registry, "residency_handshake_errors_total", protocol="tls") == 0
    assert _value(registry, "residency_flows_evicted_total") == 0
    assert _value(registry, "residency_packets_captured_total", interface="eth1") == 1000
    assert _value(registry, "residency_packets_dropped_total", interface="eth1") == 7
    assert _value(registry, "residency_alerts_sent_total") == 5
    assert _value(registry, "residency_alerts_failed_total", reason="timeout") == 2
    assert _value(registry, "residency_alerts_queued") == 3
    assert _value(registry, "residency_alerts_dropped_total") == 1
    assert _value(registry, "residency_alerts_evicted_total") == 6
    assert _value(registry, "residency_alert_retries_total") == 4
    assert _value(registry, "residency_build_info", version="9.9.9",
                  python=platform.python_version()) == 1


def test_active_flows_are_read_at_scrape_time(registry, metrics):
    engine = Engine()
    metrics.attach(engine=engine)
    frames = [(ts, lt, f, w) for ts, lt, f, w in _sample_frames()[:5]]
    engine.run(frames)
    assert _value(registry, "residency_active_flows") == engine.table.count > 0
    assert _value(registry, "residency_packets_processed_total") == 5


def _sample_frames() -> list[tuple[float, int, bytes, int]]:
    from residency_monitor.capture.files import open_capture
    with open_capture(SAMPLE_PATH) as reader:
        return list(reader)


def test_a_broken_source_leaves_the_rest_of_the_scrape(registry, metrics, caplog):
    class Broken:
        def stats(self) -> dict[str, int]:
            raise RuntimeError("queue gone")

    metrics.attach(alerts=Broken(), capture_stats=lambda: {"eth0": (1, 0)})
    with caplog.at_level(logging.ERROR, logger="residency_monitor.metrics"):
        assert _value(registry, "residency_packets_captured_total", interface="eth0") == 1
    assert _value(registry, "residency_alerts_sent_total") is None
    assert "reading alerts failed" in caplog.text


@pytest.fixture(scope="module")
def build_db():
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_test_dbs", BUILD_DBS)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build


def test_geolocation_sources(registry, metrics, build_db, tmp_path):
    built = int(NOW - 86400 * 10)
    a, b = tmp_path / "a.mmdb", tmp_path / "b.mmdb"
    build_db("country", [("203.0.113.0/24", "MO")], a, build_epoch=built)
    build_db("country", [("198.51.100.0/24", "HK")], b, build_epoch=built - 86400)
    asn = tmp_path / "asn.mmdb"
    build_db("asn", [("203.0.113.0/24", "AS64500:Example")], asn, build_epoch=built)
    geo = Geolocator(GeoConfig(databases=(str(a), str(b)), asn_databases=(str(asn),)))
    try:
        metrics.attach(geo=geo)
        ts = "residency_geo_database_build_timestamp_seconds"
        assert _value(registry, ts, source="maxmind:GeoIP2-Country") == built
        assert _value(registry, ts, source="maxmind:GeoIP2-Country#2") == built - 86400
        assert _value(registry, ts, source="asn:GeoLite2-ASN") == built
        assert _value(registry, "residency_geo_database_age_seconds",
                      source="maxmind:GeoIP2-Country") == NOW - built
        assert _value(registry, "residency_geo_database_last_reload_successful",
                      source="rir:iptocc") == 1
        assert _value(registry, "residency_geo_lookup_errors_total",
                      source="maxmind:GeoIP2-Country") == 0
        sources = {dict(k)["source"] for k in
                   _samples(registry, "residency_geo_lookup_errors_total")}
        assert not any("/" in s for s in sources), sources
    finally:
        geo.close()


# ------------------------------------------------------------------------ label hygiene

_IPV4_IN_TEXT = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


def _looks_like_an_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        return bool(_IPV4_IN_TEXT.search(value))


def test_no_label_carries_an_address_port_or_host_name(registry, metrics, sample, build_db,
                                                       tmp_path):
    recs, engine = sample
    _fed(metrics, recs)
    metrics.policy_loaded(default_policy(), "success")
    db = tmp_path / "c.mmdb"
    build_db("city", [("203.0.113.0/24", "MO")], db, build_epoch=int(NOW))
    geo = Geolocator(GeoConfig(databases=(str(db),)))
    metrics.attach(engine=engine, geo=geo, capture_stats=lambda: {"eth0": (1, 0)})
    forbidden = ({r.client_ip for r in recs} | {r.server_ip for r in recs}
                 | {r.tls_sni for r in recs if r.tls_sni}
                 | {str(p) for r in recs for p in (r.client_port, r.server_port)})
    assert len(forbidden) > 40
    seen = 0
    try:
        for fam in registry.collect():
            for s in fam.samples:
                for name, value in s.labels.items():
                    seen += 1
                    assert not re.search(r"ip|addr|port|host|sni|server|client", name), name
                    assert value not in forbidden, (s.name, name, value)
                    assert not _looks_like_an_address(value), (s.name, name, value)
                    assert not value.isdigit(), (s.name, name, value)
    finally:
        geo.close()
    assert seen > 50
    families = {fam.name for fam in registry.collect()}
    # every documented family is served (counters without their _total), alerts not attached
    assert families == set(METRIC_NAMES) - ALERT_SOURCE_FAMILIES


def test_scrapes_while_another_thread_records(registry, metrics, sample):
    """The collector copies a Counter the capture thread keeps growing; no scrape may fail."""
    engine = Engine()
    metrics.attach(engine=engine)
    stop = threading.Event()

    def capture() -> None:
        i = 0
        while not stop.is_set():
            engine.bad[f"kind{i % 5000}"] += 1   # new keys: the dict resizes under the scrape
            metrics.observe_record(sample[0][i % len(sample[0])])
            i += 1

    t = threading.Thread(target=capture)
    t.start()
    try:
        slowest = 0.0
        for _ in range(30):
            began = time.perf_counter()
            generate_latest(registry)
            slowest = max(slowest, time.perf_counter() - began)
    finally:
        stop.set()
        t.join()
    assert slowest < 1.0


# ------------------------------------------------------------------------ exporter, unit

def _get(url: str, context: ssl.SSLContext | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def exporter(registry, metrics):
    metrics.policy_loaded(default_policy(), "success")
    exp = Exporter(registry, port=0, landing=metrics.landing)
    exp.start()
    yield exp
    exp.stop()


def test_defaults_are_localhost_outside_the_exporter_range():
    assert DEFAULT_ADDRESS == "127.0.0.1"
    assert not 9100 <= DEFAULT_PORT <= 9999


def test_landing_page_metrics_and_404(exporter):
    status, headers, body = _get(exporter.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert 'href="metrics"' in page and "macau-pdpa" in page and "9.9.9" in page
    status, headers, body = _get(exporter.url + "metrics")
    assert status == 200 and b"residency_flows_total" in body
    status, _, _ = _get(exporter.url + "nothing-here")
    assert status == 404


def test_exposition_negotiates_gzip_and_openmetrics(exporter):
    status, headers, body = _get(exporter.url + "metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0",
        "Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n") and "residency_policy_info{" in text


def test_landing_page_survives_a_broken_provider(registry, caplog):
    def broken() -> dict[str, str]:
        raise KeyError("policy")

    exp = Exporter(registry, port=0, landing=broken)
    exp.start()
    try:
        with caplog.at_level(logging.ERROR, logger="residency_monitor.exporter"):
            status, _, body = _get(exp.url)
    finally:
        exp.stop()
    assert status == 200 and b"residency-monitor" in body
    assert "info provider failed" in caplog.text


def test_port_taken_is_a_clear_error(registry, exporter):
    with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{exporter.port}.*in use"):
        Exporter(registry, port=exporter.port).start()


def test_all_interfaces_without_tls_warns(registry, caplog):
    exp = Exporter(registry, address="0.0.0.0", port=0)
    with caplog.at_level(logging.WARNING, logger="residency_monitor.exporter"):
        exp.start()
    exp.stop()
    assert "all interfaces without TLS" in caplog.text


def test_promtool_finds_no_naming_problems(registry, metrics, sample, build_db, tmp_path):
    recs, engine = sample
    _fed(metrics, recs)
    metrics.policy_loaded(default_policy(), "success")
    for s in (0.002, 0.3):
        metrics.observe_verdict(s)
        metrics.observe_alert_delivered(s)
    db = tmp_path / "c.mmdb"
    build_db("country", [("203.0.113.0/24", "MO")], db, build_epoch=int(NOW))
    geo = Geolocator(GeoConfig(databases=(str(db),)))

    class Alerts:
        def stats(self) -> dict[str, Any]:
            return {"sent": 1, "failed": {"timeout": 1}, "queued": 0, "dropped": 0,
                    "evicted": 0, "retries": 1}

    metrics.attach(engine=engine, geo=geo, capture_stats=lambda: {"eth0": (5, 1)},
                   alerts=Alerts())
    try:
        exposition = generate_latest(registry)
    finally:
        geo.close()
    names = {line.split()[2] for line in exposition.decode().splitlines()
             if line.startswith("# TYPE")}
    assert len(names) == len(METRIC_NAMES)
    check = subprocess.run([find_binary("promtool"), "check", "metrics"], input=exposition,
                           capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert check.stdout.strip() == b"" and check.stderr.strip() == b""


# ------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def scraped(tmp_path_factory, sample):
    """The sample's metrics served plain, over TLS and over mTLS, scraped by one Prometheus."""
    work = tmp_path_factory.mktemp("e2e")
    certs = certificates(work)
    registry = CollectorRegistry()
    metrics = Metrics(registry, build_version="9.9.9")
    recs, engine = sample
    _fed(metrics, recs)
    metrics.policy_loaded(default_policy(), "success")
    metrics.attach(engine=engine)
    exporters = {
        "plain": Exporter(registry, port=0, landing=metrics.landing),
        "tls": Exporter(registry, port=0, certfile=certs["server"], keyfile=certs["server_key"]),
        "mtls": Exporter(registry, port=0, certfile=certs["server"],
                         keyfile=certs["server_key"], client_cafile=certs["ca"]),
    }
    for exp in exporters.values():
        exp.start()
    jobs = [
        scrape_config("plain", [f"127.0.0.1:{exporters['plain'].port}"]),
        scrape_config("tls", [f"127.0.0.1:{exporters['tls'].port}"], scheme="https",
                      tls_config={"ca_file": certs["ca"]}),
        scrape_config("mtls", [f"127.0.0.1:{exporters['mtls'].port}"], scheme="https",
                      tls_config={"ca_file": certs["ca"], "cert_file": certs["client"],
                                  "key_file": certs["client_key"]}),
    ]
    try:
        with running_prometheus(work / "prometheus", jobs) as prom:
            prom.wait_for("count(up == 1) == 3", timeout=30)
            yield prom, exporters, certs
    finally:
        for exp in exporters.values():
            exp.stop()


def test_prometheus_scrapes_the_sample(scraped):
    prom, _, _ = scraped
    assert prom.value('up{job="plain"}') == 1
    assert prom.value('sum(residency_violations_total{job="plain"})') == 12
    assert prom.value('residency_violations_total{job="plain",rule="residency",country="US"}') \
        == 3
    assert prom.value('residency_flows_total{job="plain",verdict="violation"}') == 9
    assert prom.value('sum(residency_flows_total{job="plain"})') == 26
    info = prom.query('residency_policy_info{job="plain"}')
    assert [labels["name"] for labels, _ in info] == ["macau-pdpa"]
    assert prom.value('residency_packets_processed_total{job="plain"}') == 334


def test_prometheus_scrapes_over_tls_and_mtls(scraped):
    prom, _, _ = scraped
    assert prom.value('up{job="tls"}') == 1
    assert prom.value('up{job="mtls"}') == 1
    assert prom.value('residency_flows_total{job="mtls",verdict="compliant"}') == 2


def test_tls_endpoint_serves_the_landing_page_and_refuses_plain_http(scraped):
    _, exporters, certs = scraped
    ctx = ssl.create_default_context(cafile=certs["ca"])
    status, _, body = _get(exporters["tls"].url, context=ctx)
    assert status == 200 and b"residency-monitor" in body
    assert exporters["tls"].url.startswith("https://")
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(exporters["tls"].url.replace("https:", "http:"), timeout=5)


def test_mtls_refuses_a_client_without_a_certificate(scraped):
    _, exporters, certs = scraped
    anonymous = ssl.create_default_context(cafile=certs["ca"])
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _get(exporters["mtls"].url + "metrics", context=anonymous)
    known = ssl.create_default_context(cafile=certs["ca"])
    known.load_cert_chain(certs["client"], certs["client_key"])
    status, _, body = _get(exporters["mtls"].url + "metrics", context=known)
    assert status == 200 and b"residency_flows_total" in body


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_below_1_2_is_refused(scraped):
    _, exporters, certs = scraped
    assert _tls_context(certs["server"], certs["server_key"], None).minimum_version == \
        ssl.TLSVersion.TLSv1_2
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")       # let this client offer TLS 1.1 at all
    old.load_verify_locations(certs["ca"])
    old.minimum_version = ssl.TLSVersion.TLSv1_1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _get(exporters["tls"].url, context=old)


def test_a_stalled_tls_client_does_not_block_scrapes(scraped):
    """The handshake runs in the connection's thread: a silent client holds up no one else."""
    import socket
    _, exporters, certs = scraped
    ctx = ssl.create_default_context(cafile=certs["ca"])
    with socket.create_connection(("127.0.0.1", exporters["tls"].port)):   # says nothing
        began = time.perf_counter()
        status, _, _ = _get(exporters["tls"].url + "metrics", context=ctx)
        assert status == 200 and time.perf_counter() - began < 2.0
