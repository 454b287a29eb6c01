"""Plaintext protocols and STARTTLS: recognised by content, checked against tshark's oracle."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import corpus_files, oracle

from residency_monitor import apps
from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay

ORACLE_NAMES = {"http": "http", "ftp": "ftp", "smtp": "smtp", "pop": "pop3", "imap": "imap",
                "telnet": "telnet"}

def _with_plaintext() -> list[Path]:
    return [p for p in corpus_files() if oracle(p)["plaintext_protocols"]]


def _records(path: Path) -> list[FlowRecord]:
    recs: list[FlowRecord] = []
    replay([path], recs.append)
    return [r for r in recs if r.final]


@pytest.mark.parametrize("path", _with_plaintext(), ids=lambda p: p.name)
def test_plaintext_sessions_agree_with_tshark(corpus_dir, path: Path):
    recs = _records(path)
    checked = 0
    for proto, servers in oracle(path)["plaintext_protocols"].items():
        if proto not in ORACLE_NAMES:
            continue
        for entry in servers:
            ours = [r for r in recs if r.transport == "tcp" and
                    {(r.server_ip, r.server_port), (r.client_ip, r.client_port)}
                    & {(entry["server_ip"], entry["server_port"])}]
            assert ours, (proto, entry)
            for rec in ours:
                assert rec.app == ORACLE_NAMES[proto], (rec.app, proto, entry)
                assert rec.plaintext is not rec.starttls
                checked += 1
    assert checked > 0


def test_starttls_sessions_are_encrypted_after_the_upgrade(corpus_dir):
    for name in ("zeek-smtp-starttls.pcap", "zeek-imap-starttls.pcap", "zeek-ftp-auth-tls.pcap",
                 "sv-smtp-startssl.pcap"):
        path = corpus_dir / name
        upgraded = [r for r in _records(path) if r.starttls]
        assert upgraded, name
        for rec in upgraded:
            assert rec.plaintext is False and rec.tls_version is not None
            assert rec.app in ("smtp", "imap", "ftp")


def test_http_host_and_method(corpus_dir):
    recs = [r for r in _records(corpus_dir / "zeek-get.pcap") if r.app == "http"]
    assert [(r.http_method, r.http_host, r.plaintext) for r in recs] == [("GET", "bro.org", True)]


@pytest.mark.parametrize("stream, want", [
    (b"GET /a HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n\r\n", ("GET", "example.com")),
    (b"POST /f HTTP/1.1\r\nhost: [2001:db8::1]\r\n\r\n", ("POST", "2001:db8::1")),
    (b"GET / HTTP/1.0\r\n\r\n", ("GET", None)),
    (b"\x16\x03\x01\x00\x05", None),
])
def test_http_request_line_and_host(stream, want):
    assert apps.http_request(stream) == want


def test_ldap_bind_is_recognised_by_content():
    bind = bytes.fromhex("300c020101600702010304008000")   # simple bind, messageID 1
    assert apps.detect_tcp(bind, b"", 3890) == "ldap"
    assert apps.detect_tcp(bytes.fromhex("300c020101"), b"", 389) != "ldap"   # too short


@pytest.mark.parametrize("app, client, committed", [
    ("smtp", b"EHLO me\r\nMAIL FROM:<a@b>\r\n", True),
    ("smtp", b"EHLO me\r\n", False),
    ("pop3", b"USER alice\r\n", True),
    ("imap", b"a1 LOGIN alice secret\r\n", True),
    ("ftp", b"AUTH TLS\r\n", False),
])
def test_clear_credentials_decide_a_session_is_plaintext(app, client, committed):
    assert apps.committed_plaintext(app, client) is committed
