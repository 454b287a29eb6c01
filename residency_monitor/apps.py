"""Recognise the application protocol of a flow from its first bytes.

Content decides, not the port: TLS on 8443, HTTP on 8080 and SSH on 2222 are
all common on office networks. Ports only break ties where the content of
the first bytes is shared (a "220 " greeting is SMTP or FTP). Pure functions
over the first bytes of each direction; ``None`` means "not enough bytes yet".
"""

from __future__ import annotations

from .tls import looks_like_tls

UNKNOWN = "unknown"

#: protocols that carry what they carry in the clear (unless upgraded with STARTTLS)
PLAINTEXT_APPS = frozenset(("http", "ftp", "smtp", "pop3", "imap", "telnet", "ldap"))

#: protocols that may upgrade to TLS in-band, and the client command that asks for it
STARTTLS_APPS = {"smtp": (b"STARTTLS",), "imap": (b"STARTTLS",), "pop3": (b"STLS",),
                 "ftp": (b"AUTH TLS", b"AUTH SSL")}
#: bytes of plaintext per side after which a session is taken not to upgrade
STARTTLS_WINDOW = 16384
#: client commands that send personal data before any upgrade: the session is plaintext
PLAINTEXT_COMMITS = {"smtp": (b"MAIL FROM", b"AUTH ", b"RCPT TO", b"DATA\r\n"),
                     "imap": (b" LOGIN ", b" AUTHENTICATE ", b" SELECT "),
                     "pop3": (b"USER ", b"PASS ", b"APOP ", b"AUTH "),
                     "ftp": (b"USER ", b"PASS ")}

_HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"CONNECT ",
                 b"PATCH ", b"TRACE ", b"PROPFIND ", b"PROPPATCH ", b"MKCOL ", b"COPY ",
                 b"MOVE ", b"LOCK ", b"UNLOCK ", b"REPORT ", b"SEARCH ")
_SMTP_CMDS = (b"EHLO", b"HELO", b"MAIL FROM", b"STARTTLS")
_FTP_CMDS = (b"USER ", b"AUTH TLS", b"AUTH SSL", b"FEAT", b"SYST", b"OPTS ")
_TELNET_CMDS = frozenset((0xFB, 0xFC, 0xFD, 0xFE))  # WILL, WONT, DO, DONT
_ENOUGH = 64  # bytes per side after which an unmatched stream is "unknown"


def detect_tcp(client: bytes, server: bytes, server_port: int) -> str | None:
    """The application protocol of a TCP flow, from the first bytes of each side."""
    if looks_like_tls(client) or (not client and looks_like_tls(server)):
        return "tls"
    if client:
        if client.startswith(b"SSH-"):
            return "ssh"
        if client.startswith(_HTTP_METHODS) or (len(client) < 10 and _is_method_prefix(client)):
            return "http" if client.startswith(_HTTP_METHODS) else None
    if server:
        found = _server_greeting(server, client, server_port)
        if found is not None:
            return found
        if server.startswith(b"HTTP/1."):
            return "http"
    if _looks_like_ldap(client):
        return "ldap"
    if server_port == 53 and len(client) >= 14 and client[0] << 8 | client[1] >= 12:
        return "dns"   # DNS over TCP: a 2-byte length, then a DNS header
    if (server_port == 53 and not client and len(server) >= 14
            and server[0] << 8 | server[1] >= 12 and server[4] & 0x80):
        return "dns"   # the same, answers only (the capture missed the query): QR set
    if client and client[0] == 0xFF and len(client) > 1 and client[1] in _TELNET_CMDS:
        return "telnet"
    if server and server[0] == 0xFF and len(server) > 1 and server[1] in _TELNET_CMDS:
        return "telnet"
    if len(client) >= _ENOUGH or len(server) >= _ENOUGH or (client and server):
        return UNKNOWN
    return None


def _is_method_prefix(data: bytes) -> bool:
    return any(m.startswith(data) for m in _HTTP_METHODS)


def _server_greeting(server: bytes, client: bytes, port: int) -> str | None:
    """Server-first protocols: SSH, SMTP, FTP, POP3, IMAP."""
    if server.startswith(b"SSH-"):
        return "ssh"
    if server.startswith(b"+OK"):
        return "pop3"
    if server.startswith(b"* OK") or server.startswith(b"* PREAUTH"):
        return "imap"
    if server.startswith(b"220"):
        head = server[:200].upper()
        if b"SMTP" in head or client.upper().startswith(_SMTP_CMDS) or port in (25, 465, 587):
            return "smtp"
        if b"FTP" in head or client.upper().startswith(_FTP_CMDS) or port == 21:
            return "ftp"
        if not client:
            return None  # wait for the client's first command to tell SMTP from FTP
        return UNKNOWN
    return None


#: QUIC versions recognised on any port: v1, v2 (RFC 9369), drafts 29-34, and Google QUIC.
QUIC_VERSIONS = frozenset({0x00000001, 0x6B3343CF, 0x709A50C4, *range(0xFF00001D, 0xFF000023),
                           0x51303433, 0x51303436, 0x51303530, 0x54303530, 0x54303531})


def is_quic_long_header(payload: bytes, server_port: int) -> bool:
    """A QUIC long-header packet: a known version anywhere, any version on UDP 443."""
    if len(payload) < 7 or payload[0] & 0xC0 != 0xC0 or payload[5] > 20:
        return False
    version = int.from_bytes(payload[1:5], "big")
    if version in QUIC_VERSIONS or version & 0x0F0F0F0F == 0x0A0A0A0A:  # GREASE versions
        return True
    return server_port == 443 and version != 0


def detect_udp(payload: bytes, client_port: int, server_port: int) -> str:
    """The application protocol of a UDP flow from its first payload (either direction)."""
    if 53 in (server_port, client_port) and len(payload) >= 12:
        return "dns"
    if is_quic_long_header(payload, server_port):
        return "quic"
    if 123 in (server_port, client_port) and len(payload) >= 48:
        return "ntp"
    if server_port == 5353 or client_port == 5353:
        return "mdns"
    return UNKNOWN


def find_starttls(app: str, client: bytes) -> int | None:
    """Offset just past the client's upgrade command line, or None if it has not asked yet."""
    for cmd in STARTTLS_APPS.get(app, ()):
        start = 0
        while True:
            i = client.upper().find(cmd, start)
            if i < 0:
                break
            line_start = client.rfind(b"\n", 0, i) + 1
            head = client[line_start:i]
            # SMTP/POP3/FTP: the command opens the line; IMAP: after a tag and a space
            if not head or (app == "imap" and head.endswith(b" ") and b" " not in head[:-1]):
                nl = client.find(b"\n", i)
                return None if nl < 0 else nl + 1
            start = i + 1
    return None


def tls_record_start(data: bytes, after: int) -> int | None:
    """Where the first TLS handshake record starts at a line boundary at or after ``after``."""
    i = after
    while True:
        i = data.find(b"\x16\x03", i)
        if i < 0:
            return None
        if i == 0 or data[i - 1] == 0x0A:
            return i
        i += 1


def committed_plaintext(app: str, client: bytes) -> bool:
    """Has the client already sent credentials or a message in clear, before any upgrade?"""
    upper = client.upper()
    return any(cmd in upper for cmd in PLAINTEXT_COMMITS.get(app, ()))


def _looks_like_ldap(data: bytes) -> bool:
    """An LDAPMessage: SEQUENCE, a short messageID INTEGER, then an application tag (RFC 4511)."""
    if len(data) < 7 or data[0] != 0x30:
        return False
    long_form = data[1] & 0x7F if data[1] & 0x80 else 0   # bytes of a long-form length
    pos = 2 + long_form
    if long_form > 4 or pos + 2 >= len(data) or data[pos] != 0x02:
        return False
    id_len = data[pos + 1]
    tag_at = pos + 2 + id_len
    return 1 <= id_len <= 4 and tag_at < len(data) and 0x60 <= data[tag_at] <= 0x7F


def http_request(client: bytes) -> tuple[str, str | None] | None:
    """The first request's method and Host header (lower-case, no port), from a client stream."""
    end = client.find(b"\r\n\r\n")
    head = client[:end if end >= 0 else 4096]
    line, _, rest = head.partition(b"\r\n")
    method = line.split(b" ", 1)[0]
    if not method or not method.isalpha() or not method.isupper():
        return None
    host = None
    for header in rest.split(b"\r\n"):
        name, sep, value = header.partition(b":")
        if sep and name.strip().lower() == b"host":
            raw = value.strip().decode("ascii", "replace").lower()
            host = raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw.strip("[]")
            break
    return method.decode("ascii"), host
