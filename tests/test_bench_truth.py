"""Exact flow accounting on the generated office-gateway capture, against its truth file.

``../shared/bench/make_bench_pcap.py`` writes a capture with an exact per-flow
ground truth. Every flow's packets and IP bytes per direction, its endpoints,
VLAN and times must match exactly; SNI and negotiated TLS version must match
for every TLS flow, over TCP and over QUIC (whose Initial packets are
decrypted). SMTP's STARTTLS sessions are checked against tshark in
``test_golden_corpus.py``.
"""

from __future__ import annotations

import pytest

from residency_monitor.engine import Engine
from residency_monitor.replay import replay


@pytest.fixture(scope="module")
def records(bench):
    path, _ = bench
    recs = []
    res = replay([path], recs.append)
    assert res.exit_code == 0 and not res.warnings, res.warnings
    return [r for r in recs if r.final], res


def _key(proto: str, cip, cport, sip, sport, icmp_id=None):
    return (proto, cip, cport, sip, sport, icmp_id)


def _truth_key(f: dict):
    if f["proto"] == "icmp":
        return _key("icmp", f["client_ip"], 0, f["server_ip"], 0, f["icmp_id"])
    return _key(f["proto"], f["client_ip"], f["client_port"], f["server_ip"], f["server_port"])


def _record_key(r):
    if r.transport in ("icmp", "icmp6"):
        return _key("icmp", r.client_ip, 0, r.server_ip, 0, r.icmp_id)
    return _key(r.transport, r.client_ip, r.client_port, r.server_ip, r.server_port)


def test_every_packet_read_and_decoded(bench, records):
    _, truth = bench
    recs, res = records
    assert res.packets == truth["totals"]["packets"]
    assert res.decode_errors == {}
    assert sum(r.packets_out + r.packets_in for r in recs) == truth["totals"]["packets"]
    assert sum(r.bytes_out + r.bytes_in for r in recs) == truth["totals"]["ip_bytes"]


def test_flows_match_truth_exactly(bench, records):
    _, truth = bench
    recs, _ = records
    ours = {}
    for r in recs:
        k = _record_key(r)
        assert k not in ours, f"flow split in two records: {k}"
        ours[k] = r
    mismatches = []
    for f in truth["flows"]:
        r = ours.pop(_truth_key(f), None)
        if r is None:
            mismatches.append(("missing (or client/server swapped)", _truth_key(f)))
            continue
        got = (r.packets_out, r.packets_in, r.bytes_out, r.bytes_in, r.vlan,
               round(r.ts_start * 1e6), round(r.ts_end * 1e6))
        want = (f["c2s_packets"], f["s2c_packets"], f["c2s_ip_bytes"], f["s2c_ip_bytes"],
                f["vlan"], f["first_ts_us"], f["last_ts_us"])
        if got != want:
            mismatches.append((_truth_key(f), got, want))
    assert mismatches == []
    assert ours == {}, f"records with no flow in the truth: {list(ours)[:5]}"


def test_tls_over_tcp_matches_truth(bench, records):
    _, truth = bench
    recs, _ = records
    ours = {_record_key(r): r for r in recs}
    checked, bad = 0, []
    for f in truth["flows"]:
        tls = f.get("tls")
        if f["app"] not in ("tls", "quic") or not tls:
            continue
        r = ours[_truth_key(f)]
        version = tls.get("negotiated_version")
        want_version = f"TLS {version}" if version else None
        assert r.app == f["app"]
        if f["app"] == "quic":
            assert r.quic_version == "QUICv1" and r.tls_ja4.startswith("q13")
        complete = tls.get("client_hello_complete", True)
        if complete and (r.tls_sni, r.tls_version) != (tls["sni"], want_version):
            bad.append((_truth_key(f), r.tls_sni, tls["sni"], r.tls_version, want_version))
        checked += 1
    assert bad == []
    assert checked > 500


def test_flow_end_reasons_follow_tcp_teardown(bench, records):
    _, truth = bench
    recs, _ = records
    ours = {_record_key(r): r for r in recs}
    expect = {"closed": "fin", "reset": "rst"}
    for f in truth["flows"]:
        state = (f.get("tcp") or {}).get("state_at_end")
        if state in expect:
            assert ours[_truth_key(f)].end_reason == expect[state], _truth_key(f)


def test_engine_counts_match_replay(bench):
    """The same capture through a bare Engine (no file driver) gives the same records."""
    from residency_monitor.capture.files import open_capture

    path, truth = bench
    recs = []
    eng = Engine(sink=recs.append)
    with open_capture(path) as reader:
        eng.run(reader)
    eng.finish()
    assert eng.packets == truth["totals"]["packets"]
    assert len([r for r in recs if r.final]) == truth["totals"]["flows"]
