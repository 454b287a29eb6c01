"""DNS names for destinations: what the client resolved before connecting, in flow records.

Checked on the bench capture against an independent reading of its truth file
(which DNS answers, seen by which client before the connection, held the
server's address), and through the policy: a server-name exception applies to
a flow that shows no SNI of its own.
"""

from __future__ import annotations

from conftest import ROOT  # noqa: I001

from residency_monitor.engine import Engine
from residency_monitor.geo import GeoConfig, Geolocator
from residency_monitor.policy import parse_policy
from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay
from residency_monitor.residency import Residency
from residency_monitor.sample import SAMPLE_PATH


def _final(path, enrich=None) -> list[FlowRecord]:
    recs: list[FlowRecord] = []
    replay([path], recs.append, engine=Engine(sink=recs.append, enrich=enrich))
    return [r for r in recs if r.final]


def test_sample_server_names_follow_cname_chains():
    by_sni = {r.tls_sni: r for r in _final(SAMPLE_PATH) if r.tls_sni}
    crm = by_sni["api.crm-saas-us.example"]
    assert crm.server_names == ["api.crm-saas-us.example", "crm-prod.edge.crm-saas-us.example"]
    assert by_sni["portal.bank-mo.example"].server_names == ["portal.bank-mo.example"]


def _truth_lookups(truth: dict) -> dict[tuple[str, str], list[tuple[int, set[str]]]]:
    """(client, address) -> [(answer time, names on its chain)], from the truth's DNS flows."""
    seen: dict[tuple[str, str], list[tuple[int, set[str]]]] = {}
    for f in truth["flows"]:
        d = f.get("dns")
        if not d or not d.get("response_seen") or d.get("rcode"):
            continue
        chain = {d["qname"].lower()}
        for a in d["answers"]:
            if a["type"] == 5:
                chain.add(a["data"].rstrip(".").lower())
        for a in d["answers"]:
            if a["type"] in (1, 28) and a["name"].lower() in chain:
                seen.setdefault((f["client_ip"], a["data"]), []).append(
                    (f["last_ts_us"], chain))
    return seen


def test_bench_flows_carry_the_names_their_client_resolved(bench):
    path, truth = bench
    ours = {(r.client_ip, r.client_port, r.server_ip, r.server_port): r for r in _final(path)}
    lookups = _truth_lookups(truth)
    checked = 0
    for f in truth["flows"]:
        if f["app"] not in ("tls", "quic", "http"):
            continue
        earlier = [names for ts, names in lookups.get((f["client_ip"], f["server_ip"]), [])
                   if ts <= f["first_ts_us"]]
        if not earlier:
            continue
        rec = ours[(f["client_ip"], f["client_port"], f["server_ip"], f["server_port"])]
        assert set().union(*earlier) <= set(rec.server_names) or \
            len(rec.server_names) == 8, (rec.server_names, earlier)   # at most 8 per address
        checked += 1
    assert checked > 300


def test_a_server_name_exception_applies_to_a_flow_without_sni():
    text = (ROOT / "configs" / "policies" / "macau-pdpa.yaml").read_text().replace(
        "exceptions: []",
        "exceptions:\n  - id: sg-events\n    match: {sni: [forms.sg-events.example]}\n"
        "    waives: [residency, plaintext]\n    reason: event registration, consented\n"
        "    owner: DPO\n    expires: 2030-01-01")
    residency = Residency(parse_policy(text, "with-exception"), Geolocator(GeoConfig()))
    http = next(r for r in _final(SAMPLE_PATH, residency) if r.app == "http")
    assert http.tls_sni is None and http.server_names == ["forms.sg-events.example"]
    assert (http.verdict, http.exception, http.violations) == ("exempt", "sg-events", [])


def _hello_flow(server: str, port: int, sni: bytes) -> list[FlowRecord]:
    """A TCP handshake and a ClientHello with ``sni`` from an office client to ``server``."""
    from test_flows import ACK, PSH, SYN, tcp
    from test_tls import client_hello_body, message, record, sni_ext

    hello = record(22, message(1, client_hello_body([sni_ext(sni)])))
    client = "192.168.1.50"
    recs: list[FlowRecord] = []
    engine = Engine(sink=recs.append)
    for ts, frame in [(0.0, tcp(client, 50000, server, port, SYN, seq=100)),
                      (0.01, tcp(server, port, client, 50000, SYN | ACK, seq=900)),
                      (0.02, tcp(client, 50000, server, port, ACK | PSH, seq=101,
                                 payload=hello))]:
        engine.frame(ts, 1, frame)
    engine.finish()
    return recs


def test_dns_over_tls_and_https_are_said_as_such():
    (dot,) = _hello_flow("1.1.1.1", 853, b"one.one.one.one")
    assert (dot.encrypted_dns, dot.dns_provider) == ("dot", "Cloudflare")
    (doh,) = _hello_flow("8.8.8.8", 443, b"dns.google")
    assert (doh.encrypted_dns, doh.dns_provider) == ("doh", "Google Public DNS")
    (web,) = _hello_flow("203.0.113.9", 443, b"www.example.com")
    assert (web.encrypted_dns, web.dns_provider) == (None, None)
