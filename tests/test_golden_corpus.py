"""Golden tests: every corpus capture replayed, compared with tshark's oracle.

For each TLS connection tshark found (over TCP or QUIC), our flow record must carry the
same SNI, negotiated and offered versions, ALPN, chosen cipher, JA3, JA3S and
JA4. Where we knowingly disagree with tshark the case is listed in
``DISAGREEMENTS`` with who is right and why; such an entry must still
disagree, so a fix on either side makes the test say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import corpus_files, oracle

from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay
from residency_monitor.tls_names import cipher_name

CAPTURES = corpus_files()

# (capture, client port, field) -> why our value differs from tshark's, and who is right
DISAGREEMENTS: dict[tuple[str, int, str], str] = {}

# tshark reads these files only up to the damage; we read the same frames (see test_capture_files)
DAMAGED = {"sv-bug-1450-04-tls_DER-incomplete-header.pcap"}


def _records(path: Path) -> list[FlowRecord]:
    recs: list[FlowRecord] = []
    replay([path], recs.append)
    return [r for r in recs if r.final]


def _find(recs: list[FlowRecord], conn: dict) -> FlowRecord:
    want = (conn["client_ip"], conn["client_port"], conn["server_ip"], conn["server_port"])
    for r in recs:
        if (r.client_ip, r.client_port, r.server_ip, r.server_port) == want:
            return r
    for r in recs:  # tshark used its port heuristic; we may have seen more (a SYN, a hello)
        if (r.server_ip, r.server_port, r.client_ip, r.client_port) == want:
            return r
    raise AssertionError(f"no flow record for {want}")


def _expected(conn: dict) -> dict:
    return {
        "tls_sni": conn["sni"],
        "tls_version": conn["negotiated_version_name"],
        "tls_client_versions": conn["offered_versions_names"] if conn["client_hello_seen"] else [],
        "tls_alpn": conn["alpn_offered"] if conn["client_hello_seen"] else [],
        "tls_alpn_chosen": conn["alpn_selected"],
        "tls_cipher": cipher_name(int(conn["cipher_suite"], 16)) if conn["cipher_suite"] else None,
        "tls_ja3": conn["ja3"],
        "tls_ja3s": conn["ja3s"],
        "tls_ja4": conn["ja4"],
        "tls_hrr": conn["hello_retry_request"],
        "tls_ech": conn["ech_extension_offered"],
    }


def _tls_conns(path: Path) -> list[dict]:
    return [c for c in oracle(path)["tls_connections"] if c["protocol"] in ("tls", "quic")]


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_every_capture_is_read(corpus_dir, path: Path):
    recs: list[FlowRecord] = []
    res = replay([path], recs.append)
    orc = oracle(path)
    assert res.errors == []
    if path.name in DAMAGED:
        assert res.packets >= orc["packets"] and any("cut short" in w or "damaged" in w
                                                     for w in res.warnings)
    else:
        assert res.packets == orc["packets"]
    assert res.exit_code == 0


@pytest.mark.parametrize("path", [p for p in CAPTURES if _tls_conns(p)], ids=lambda p: p.name)
def test_tls_metadata_agrees_with_tshark(corpus_dir, path: Path):
    recs = _records(path)
    disagreements = []
    for conn in _tls_conns(path):
        rec = _find(recs, conn)
        assert rec.app == conn["protocol"] or conn.get("plaintext_protocols_in_stream"), rec
        for field, want in _expected(conn).items():
            got = getattr(rec, field)
            known = DISAGREEMENTS.get((path.name, conn["client_port"], field))
            if known:
                assert got != want, f"listed disagreement no longer holds: {known}"
            elif got != want:
                disagreements.append((conn["client_port"], field, got, want))
    assert disagreements == []
