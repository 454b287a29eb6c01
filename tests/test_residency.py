"""Verdicts end to end: captures replayed with geolocation and a policy.

On the bundled sample the expected verdicts follow from its generator's
stated countries; on the bench capture they are computed independently from
the truth file (server country, negotiated TLS version, application) and a
Country database built from the truth's own table with ``geo/build_test_dbs.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from residency_monitor.engine import Engine
from residency_monitor.geo import GeoConfig, Geolocator
from residency_monitor.policy import default_policy, parse_policy
from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay
from residency_monitor.residency import Residency
from residency_monitor.sample import EXPECTED, SAMPLE_PATH

BUILD_DBS = ROOT / "geo" / "build_test_dbs.py"
MACAU = (ROOT / "configs" / "policies" / "macau-pdpa.yaml").read_text()


def _replay(paths, policy=None, geo: GeoConfig | None = None) -> list[FlowRecord]:
    recs: list[FlowRecord] = []
    residency = Residency(policy or default_policy(), Geolocator(geo or GeoConfig()))
    replay(paths, recs.append, engine=Engine(sink=recs.append, enrich=residency))
    return [r for r in recs if r.final]


def _by_server(recs: list[FlowRecord]) -> dict[tuple[str, int], FlowRecord]:
    return {(r.server_ip, r.server_port): r for r in recs}


@pytest.fixture(scope="module")
def sample() -> dict[tuple[str, int], FlowRecord]:
    return _by_server(_replay([SAMPLE_PATH]))


def _expected(name: str) -> dict:
    return next(e for e in EXPECTED if e["name"] == name)


@pytest.mark.parametrize("name, verdict, violations", [
    ("mo-bank", "compliant", []),
    ("mo-vlan", "compliant", []),
    ("us-crm", "violation", ["residency"]),
    ("cn-logistics", "violation", ["residency"]),        # conditional: needs the GBA contract
    ("hk-supplier", "violation", ["residency"]),         # Hong Kong is outside Macau
    ("jp-travel", "violation", ["residency"]),
    ("de-ipv6", "violation", ["residency"]),
    ("de-legacy", "violation", ["residency", "tls_version"]),
    ("sg-http", "violation", ["residency", "plaintext"]),
    ("us-smtp", "violation", ["residency", "plaintext"]),
    ("dead-syn", "violation", ["residency"]),            # an attempt to send abroad
    ("print-job", "not_evaluated", []),
    ("nas-https", "not_evaluated", []),
])
def test_sample_verdicts_under_the_default_macau_policy(sample, name, verdict, violations):
    e = _expected(name)
    rec = sample[(e["server_ip"], e["server_port"])]
    assert (rec.verdict, rec.violations) == (verdict, violations), rec.explanation
    assert rec.dst_country == e["country"]
    if e["country"]:
        assert rec.dst_country_source == "rir" and rec.dst_country_basis == "registry"
        assert rec.zone == "default" and rec.classification == "personal"


def test_sample_explanations_name_the_rule(sample):
    cn = sample[(_expected("cn-logistics")["server_ip"], 443)]
    assert "CN" in cn.explanation and "Greater Bay Area" in cn.explanation
    legacy = sample[(_expected("de-legacy")["server_ip"], 443)]
    assert "TLS 1.0" in legacy.explanation and "TLS 1.2" in legacy.explanation


def test_detection_time_is_the_deciding_packet(sample):
    us = sample[(_expected("us-crm")["server_ip"], 443)]
    assert us.detected_at == us.ts_start and us.detection_latency_s == 0   # country alone decides
    mo = sample[(_expected("mo-bank")["server_ip"], 443)]
    assert mo.detected_at == mo.handshake_at > mo.ts_start                  # needs the ServerHello
    assert mo.detection_latency_s == pytest.approx(mo.handshake_at - mo.ts_start, abs=1e-6)
    legacy = sample[(_expected("de-legacy")["server_ip"], 443)]
    assert legacy.detected_at == legacy.handshake_at                        # TLS 1.0 seen there


def test_not_evaluated_flows_carry_no_detection_time(sample):
    ping = sample[("8.8.8.8", 0)]
    assert ping.verdict == "not_evaluated" and ping.detected_at is None


EXCEPTIONS = """
exceptions:
  - id: crm-us
    match: {sni: ["*.crm-saas-us.example", "api.crm-saas-us.example"]}
    reason: "DPA signed; Art. 20(1) notification 12/2026"
    owner: "DPO <dpo@example.mo>"
    expires: 2027-06-30
  - id: old-hk
    match: {country: [HK]}
    reason: "supplier contract, ended"
    owner: "DPO <dpo@example.mo>"
    expires: 2025-12-31
"""


def test_exceptions_exempt_without_hiding_and_expire():
    policy = parse_policy(MACAU.replace("exceptions: []", EXCEPTIONS.strip())
                          if "exceptions: []" in MACAU else MACAU + EXCEPTIONS, "test-policy")
    recs = _by_server(_replay([SAMPLE_PATH], policy))
    crm = recs[(_expected("us-crm")["server_ip"], 443)]
    assert (crm.verdict, crm.exception, crm.violations) == ("exempt", "crm-us", [])
    assert "crm-us" in crm.explanation
    hk = recs[(_expected("hk-supplier")["server_ip"], 443)]
    assert (hk.verdict, hk.exception, hk.exception_expired) == ("violation", None, "old-hk")
    # with an SNI exception in force, a residency violation is only certain once the SNI is seen
    jp = recs[(_expected("jp-travel")["server_ip"], 443)]
    assert jp.verdict == "violation" and jp.detected_at == jp.handshake_at > jp.ts_start


def test_geo_override_relocates_a_destination_and_labels_it():
    crm_ip = _expected("us-crm")["server_ip"]
    geo = GeoConfig(overrides=((crm_ip.rsplit(".", 1)[0] + ".0/24", "MO",
                                "company cloud, Macau region"),))
    rec = _by_server(_replay([SAMPLE_PATH], geo=geo))[(crm_ip, 443)]
    assert (rec.dst_country, rec.dst_country_source, rec.dst_label) == (
        "MO", "override", "company cloud, Macau region")
    assert rec.verdict == "compliant"


def test_unlocated_destination_fails_closed():
    recs = _by_server(_replay([SAMPLE_PATH], geo=GeoConfig(embedded=False)))
    rec = recs[(_expected("mo-bank")["server_ip"], 443)]
    assert (rec.dst_country, rec.verdict, rec.violations) == (None, "violation", ["geo_unknown"])


# -- the bench capture: every flow's verdict against an independent computation -------------

PLAINTEXT = {"http", "smtp"}


def _independent_verdict(f: dict) -> tuple[str, list[str]]:
    """The Macau pack's rules applied by hand to the truth file's facts."""
    country = f["server_country"]
    if country == "--" or f["app"] in ("icmp", "ntp"):
        return "not_evaluated", []
    violations = [] if country == "MO" else ["residency"]
    tls = f.get("tls") or {}
    negotiated = tls.get("negotiated_version")
    starttls = (f.get("smtp") or {}).get("starttls") and negotiated
    if f["app"] in PLAINTEXT and not starttls:
        violations.append("plaintext")
    elif f["app"] in ("tls", "quic") or starttls:
        if negotiated is None:
            violations.append("no_handshake")
        elif negotiated in ("1.0", "1.1"):
            violations.append("tls_version")
    return ("violation" if violations else "compliant"), violations


@pytest.fixture(scope="module")
def bench_country_db(bench, tmp_path_factory) -> Path:
    path, _ = bench
    out = tmp_path_factory.mktemp("geo") / "bench-country.mmdb"
    subprocess.run([sys.executable, str(BUILD_DBS), "--kind", "country", "--out", str(out),
                    "--from-bench-truth", str(path.with_name(path.name + ".truth.json"))],
                   check=True, capture_output=True)
    return out


def _truth_key(f: dict) -> tuple:
    return (f["client_ip"], f.get("client_port") or 0, f["server_ip"], f.get("server_port") or 0)


def _record_key(r: FlowRecord) -> tuple:
    if r.transport in ("icmp", "icmp6"):
        return (r.client_ip, 0, r.server_ip, 0)
    return (r.client_ip, r.client_port, r.server_ip, r.server_port)


def test_bench_verdicts_match_an_independent_computation(bench, bench_country_db):
    path, truth = bench
    recs = _replay([path], geo=GeoConfig(databases=(str(bench_country_db),), embedded=False))
    ours = {_record_key(r): r for r in recs}
    mismatches, counted = [], {"violation": 0, "compliant": 0, "not_evaluated": 0}
    for f in truth["flows"]:
        want = _independent_verdict(f)
        r = ours[_truth_key(f)]
        got = (r.verdict, r.violations)
        counted[want[0]] += 1
        if got != want:
            mismatches.append((_truth_key(f), f["app"], got, want, r.explanation))
        if f["server_country"] != "--":
            assert r.dst_country == f["server_country"] and r.dst_country_source == "maxmind"
    assert mismatches == []
    assert counted["violation"] > 100 and counted["not_evaluated"] > 100


def test_live_judge_decides_at_the_deciding_packet():
    """What the daemon alerts on: a violation as soon as the packet that decides it is seen."""
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    decided: dict[str, tuple[str, float, tuple[str, ...]]] = {}

    def live(flow, ts, stage):
        hit = residency.judge_live(flow, ts, stage)
        if hit is not None:
            verdict, facts = hit
            decided.setdefault(facts.server_ip, (stage, ts, verdict.violations))

    recs: list[FlowRecord] = []
    replay([SAMPLE_PATH], recs.append, engine=Engine(sink=recs.append, live=live))
    by_ip = {r.server_ip: r for r in recs if r.final}
    us = _expected("us-crm")["server_ip"]
    assert decided[us] == ("first_packet", by_ip[us].ts_start, ("residency",))
    mo = _expected("mo-bank")["server_ip"]
    assert mo not in decided                                # compliant: nothing to alert
    assert _expected("nas-https")["server_ip"] not in decided   # internal
    assert len(decided) == 9   # the nine outbound violations of the sample, none twice


def _udp_frame(src: str, sport: int, dst: str, dport: int) -> bytes:
    import socket
    import struct
    payload = b"x" * 32
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def test_nothing_sent_from_inside_is_no_violation():
    """A flood of datagrams from abroad, from port 443 to internal ephemeral ports: the port
    rule makes the internal host the "client", but it sent nothing, so nothing left the
    network. Without this, every such datagram was a live residency violation (an alert
    storm from an inbound flood: bench_attacks.py measured 492,403 in 1M datagrams)."""
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    live_hits: list = []
    recs: list[FlowRecord] = []
    engine = Engine(sink=recs.append, enrich=residency,
                    live=lambda f, ts, stage: live_hits.append(
                        residency.judge_live(f, ts, stage)))
    for i in range(20):
        engine.frame(1.0 + i, 1, _udp_frame("8.8.4.4", 443, "10.0.0.5", 50000 + i))
    # one internal host that does answer: that flow is judged as before
    engine.frame(30.0, 1, _udp_frame("10.0.0.6", 50999, "8.8.4.4", 443))
    engine.finish()
    hits = [h for h in live_hits if h is not None]
    assert hits and {facts.client_ip for _verdict, facts in hits} == {"10.0.0.6"}
    quiet = [r for r in recs if r.client_ip == "10.0.0.5"]
    assert len(quiet) == 20 and {r.direction for r in quiet} == {"outbound"}
    assert {r.verdict for r in quiet} == {"not_evaluated"}
    assert "the internal side sent nothing" in quiet[0].explanation
    (answered,) = [r for r in recs if r.client_ip == "10.0.0.6"]
    assert answered.verdict == "violation" and "residency" in answered.violations
