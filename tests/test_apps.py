"""Application recognition by content, STARTTLS following, and a fuzz of the TCP inspector."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from residency_monitor import apps
from residency_monitor.flows import ACK, SYN, Flow
from residency_monitor.inspect import TcpInspector


@pytest.mark.parametrize("client, server, port, app", [
    (b"\x16\x03\x01\x02\x00\x01", b"", 8443, "tls"),            # TLS on an odd port
    (b"GET / HTTP/1.1\r\nHost: x\r\n", b"", 8080, "http"),
    (b"POST /login HTTP/1.1\r\n", b"", 443, "http"),            # plaintext HTTP on 443
    (b"SSH-2.0-OpenSSH_9.6\r\n", b"", 2222, "ssh"),
    (b"", b"SSH-2.0-dropbear\r\n", 22, "ssh"),
    (b"", b"220 mx.example ESMTP Postfix\r\n", 2525, "smtp"),
    (b"", b"220 ProFTPD Server ready\r\n", 2121, "ftp"),
    (b"EHLO me\r\n", b"220 welcome\r\n", 9999, "smtp"),          # client's command decides
    (b"USER anonymous\r\n", b"220 welcome\r\n", 9999, "ftp"),
    (b"", b"+OK POP3 ready\r\n", 110, "pop3"),
    (b"", b"* OK [CAPABILITY IMAP4rev1] ready\r\n", 143, "imap"),
    (b"\xff\xfd\x18\xff\xfd\x20", b"", 23, "telnet"),
    (b"\x00\x01\x02\x03", b"\x00\x00\x00\x00", 4444, "unknown"),
    (b"\x00\x1d\x12\x34\x01\x00" + b"\x00" * 8, b"", 53, "dns"),   # DNS query over TCP
    # only the answer was captured (as in zeek-dns-edns-ecs.pcap): a length, then QR set
    (b"", b"\x01\x2c\x12\x34\x81\x80" + b"\x00" * 8, 53, "dns"),
    (b"", b"\x01\x2c\x12\x34\x01\x00" + b"\x00" * 8 + b"x" * 300, 53, "unknown"),  # QR clear
])
def test_detect_tcp_by_content(client, server, port, app):
    assert apps.detect_tcp(client, server, port) == app


@pytest.mark.parametrize("client, server", [
    (b"GE", b""),              # could still become "GET "
    (b"", b"220 welcome\r\n"),  # SMTP or FTP: wait for the client's command
    (b"", b""),
])
def test_detect_tcp_waits_for_more(client, server):
    assert apps.detect_tcp(client, server, 9999) is None


@pytest.mark.parametrize("payload, cport, sport, app", [
    (b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6, 50000, 53, "dns"),
    (b"\xc3\x00\x00\x00\x01\x08" + b"\x00" * 30, 50000, 4433, "quic"),   # v1 on any port
    (b"\xc3\x6b\x33\x43\xcf\x08" + b"\x00" * 30, 50000, 4433, "quic"),   # v2
    (b"\xc3\x12\x34\x56\x78\x08" + b"\x00" * 30, 50000, 443, "quic"),    # unknown version on 443
    (b"\xc3\x12\x34\x56\x78\x08" + b"\x00" * 30, 50000, 4433, "unknown"),
    (b"\xe3" + b"\x00" * 47, 123, 123, "ntp"),
])
def test_detect_udp(payload, cport, sport, app):
    assert apps.detect_udp(payload, cport, sport) == app


def test_dns_query_whose_id_looks_like_a_quic_long_header_is_dns():
    query = b"\xc9\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"
    assert apps.detect_udp(query, 40000, 53) == "dns"


@pytest.mark.parametrize("app, client, offset", [
    ("smtp", b"EHLO me\r\nSTARTTLS\r\n\x16\x03\x01", 19),
    ("imap", b"a1 CAPABILITY\r\na2 STARTTLS\r\n", 28),
    ("pop3", b"CAPA\r\nSTLS\r\n", 12),
    ("ftp", b"AUTH TLS\r\n", 10),
    ("smtp", b"MAIL FROM:<starttls@example>\r\n", None),  # the word inside a command is no upgrade
    ("smtp", b"STARTTLS", None),                           # line not finished yet
])
def test_find_starttls(app, client, offset):
    assert apps.find_starttls(app, client) == offset


def test_tls_record_start_only_at_a_line_boundary():
    data = b"220 go ahead \x16\x03 inline\r\n\x16\x03\x03\x00\x10"
    assert apps.tls_record_start(data, 0) == data.index(b"\r\n\x16") + 2


def _flow() -> Flow:
    return Flow(b"\x0a\x00\x00\x01\xcb\x00\x71\x07\x9c\x40\x01\xbb", 6, None, 0.0, "tcp_syn")


def _seg(seq: int, payload: bytes, flags: int = ACK) -> tuple:
    return (6, b"", 40 + len(payload), None, flags, seq, 0, len(payload), 4, None)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000),
                          st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x03\x00\x05\x01", b"",
                                           b"220 ", b"EHLO x\r\nSTARTTLS\r\n"]),
                          st.binary(max_size=300)), max_size=30))
def test_tcp_inspector_survives_any_segments(segments):
    """Random segments (TLS-ish, SMTP-ish, garbage) never make the inspector raise."""
    errors: Counter[str] = Counter()
    insp = TcpInspector(443, 4096, errors)
    f = _flow()
    insp.feed(f, True, 0.0, _seg(1000, b"", SYN), b"")
    insp.feed(f, False, 0.0, _seg(5000, b"", SYN | ACK), b"")
    for from_client, off, prefix, body in segments:
        payload = prefix + body
        seq = (1001 if from_client else 5001) + off
        d = _seg(seq, payload)
        if insp.feed(f, from_client, 1.0, d, payload):
            break
    assert insp.app in (None, "tls", "smtp", "unknown", "http", "ftp", "ssh", "telnet",
                        "pop3", "imap")
    assert sum(len(b.data) for b in insp.bufs if b is not None) <= 2 * 4096
