"""TLS handshake parsing: the facts a passive monitor can read in the clear.

A TLS connection opens with a ClientHello (what the client offers: server
name, versions, ALPN, cipher suites, key shares) and a ServerHello (what the
server picked). Both travel unencrypted, possibly split over several TCP
segments and TLS records. Everything here is a pure function over bytes and
follows the parser contract of :mod:`residency_monitor.wire`: a result,
``None`` for "not enough bytes yet", or :class:`ParseError`.

The same ClientHello parser serves TLS over TCP, QUIC (the CRYPTO stream
carries bare handshake messages) and DTLS (detected by its 0xfeXX version).

Decisions worth knowing:

* ``sni`` is the first ``host_name`` only if it is a valid DNS host name
  (letter/digit/hyphen/underscore labels, no empty label, at most 253
  characters). It is lower-cased and a trailing dot is stripped, because host
  names compare case-insensitively and policy, DNS and metrics code should
  not each have to normalise it.
* A malformed *inner* extension (for example an odd-length supported_groups)
  leaves that one field empty instead of losing the whole hello: the outer
  framing is length-prefixed, so the SNI and the rest stay trustworthy.
* SSLv2-format hellos are parsed by the same entry points: a handshake body
  whose first byte has the high bit set (other than DTLS's 0xfe) cannot be a
  TLS hello (versions are 0x03XX or 0x7fXX), so it is read as a whole SSLv2
  record, as ``read_handshake_messages`` returns it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .tls_names import is_grease
from .wire import Cursor, NeedMore, ParseError

T = TypeVar("T")
D = TypeVar("D")

__all__ = [
    "ClientHello",
    "ServerHello",
    "ParseError",
    "HRR_RANDOM",
    "host_name",
    "parse_client_hello",
    "parse_server_hello",
    "parse_sslv2_client_hello",
    "parse_sslv2_server_hello",
    "read_handshake_messages",
    "split_handshake",
    "looks_like_tls",
]

# Record content types (RFC 8446 §5.1).
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
# Handshake message types this module interprets.
CLIENT_HELLO, SERVER_HELLO = 1, 2
# Extension code points.
EXT_SERVER_NAME, EXT_SUPPORTED_GROUPS, EXT_EC_POINT_FORMATS = 0x0000, 0x000A, 0x000B
EXT_SIGNATURE_ALGORITHMS, EXT_ALPN = 0x000D, 0x0010
EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE, EXT_ECH = 0x002B, 0x0033, 0xFE0D

#: ServerHello.random of a HelloRetryRequest: SHA-256("HelloRetryRequest") (RFC 8446 §4.1.3).
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

# A TLSCiphertext fragment may be 2^14 + 256 bytes (RFC 8446 §5.2); older
# versions allowed 2^14 + 2048. Anything longer is not TLS.
_MAX_RECORD = 16384 + 2048
_SSLV2_CLIENT_HELLO, _SSLV2_SERVER_HELLO = 1, 4


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a client offered. Lists keep wire order; GREASE is kept unless noted."""

    legacy_version: int
    versions: tuple[int, ...]  # supported_versions without GREASE, else (legacy_version,)
    sni: str | None
    alpn: tuple[str, ...]
    alpn_raw: tuple[bytes, ...]
    cipher_suites: tuple[int, ...]  # SSLv2: 24-bit cipher specs (TLS ones are < 0x10000)
    extensions: tuple[int, ...]
    groups: tuple[int, ...]
    ec_point_formats: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    key_share_groups: tuple[int, ...]
    ech: bool
    sslv2: bool


@dataclass(frozen=True, slots=True)
class ServerHello:
    """What a server picked (or, for a HelloRetryRequest, asked for)."""

    legacy_version: int
    version: int
    cipher_suite: int  # SSLv2: the server's first cipher spec (the client chooses)
    extensions: tuple[int, ...]
    alpn: str | None
    hello_retry_request: bool
    key_share_group: int | None
    sslv2: bool = False


# --------------------------------------------------------------------------
# Small readers
# --------------------------------------------------------------------------

def _u16_list(c: Cursor) -> tuple[int, ...]:
    """Read the rest of ``c`` as big-endian u16 values (a stray odd byte is an error)."""
    n = c.remaining()
    if n % 2:
        raise ParseError("odd length in a list of 16-bit values")
    return struct.unpack(f"!{n >> 1}H", c.take(n))


def _u8_list(c: Cursor) -> tuple[int, ...]:
    return tuple(c.take(c.remaining()))


# Letters, digits, '-' and '_' (seen in real names), 1-63 per label, dot-separated. One
# regular expression: checking byte by byte in Python was a tenth of a ClientHello parse.
_HOST_NAME = re.compile(rb"[0-9A-Za-z_-]{1,63}(?:\.[0-9A-Za-z_-]{1,63})*")


def host_name(raw: bytes) -> str | None:
    """``raw`` as a normalised DNS host name (lower case, no trailing dot), else None."""
    if raw.endswith(b"."):
        raw = raw[:-1]
    if len(raw) > 253 or _HOST_NAME.fullmatch(raw) is None:
        return None
    return raw.decode("ascii").lower()


class _Extensions:
    """The extension block as ``type -> (start, end)`` of the first occurrence of each type.

    Payload cursors are made only for the few extensions that are decoded:
    building one per extension cost about a third of a ClientHello parse.
    """

    __slots__ = ("buf", "types", "spans")

    def __init__(self, c: Cursor):
        self.buf = c.buf
        types: list[int] = []
        spans: dict[int, tuple[int, int]] = {}
        if c.remaining():  # SSL 3.0 / early TLS hellos may end before the extensions
            block = c.vec16()
            buf, pos, end = block.buf, block.pos, block.end
            while pos < end:
                if pos + 4 > end:
                    raise ParseError(f"extension header overruns the extension block at {pos}")
                etype = buf[pos] << 8 | buf[pos + 1]
                start = pos + 4
                pos = start + (buf[pos + 2] << 8 | buf[pos + 3])
                if pos > end:
                    raise ParseError(f"extension {etype:#06x} overruns the extension block")
                types.append(etype)
                # a duplicate is ignored, as peers must reject it: the first one counts
                spans.setdefault(etype, (start, pos))
        self.types = tuple(types)
        self.spans = spans

    def get(self, etype: int) -> Cursor | None:
        span = self.spans.get(etype)
        return None if span is None else Cursor(self.buf, span[0], span[1], strict=True)


def _salvage(read: Callable[[Cursor], T], payload: Cursor | None, default: D) -> T | D:
    """Decode one extension, or give ``default`` when it is absent or malformed."""
    if payload is None:
        return default
    try:
        return read(payload)  # payload cursors are strict: an overrun is a ParseError
    except ParseError:
        return default


# --------------------------------------------------------------------------
# ClientHello extensions
# --------------------------------------------------------------------------

def _sni(c: Cursor) -> str | None:
    names = c.vec16()
    while names.remaining():
        name_type, name = names.u8(), names.vec16()
        if name_type == 0:
            return host_name(name.take(name.remaining()))
    return None


def _alpn_list(c: Cursor) -> tuple[bytes, ...]:
    names = c.vec16()
    out = []
    while names.remaining():
        n = names.vec8()
        out.append(n.take(n.remaining()))
    return tuple(out)


def _client_versions(c: Cursor) -> tuple[int, ...]:
    return _u16_list(c.vec8())


def _client_key_shares(c: Cursor) -> tuple[int, ...]:
    shares = c.vec16()
    out = []
    while shares.remaining():
        out.append(shares.u16())
        shares.vec16()
    return tuple(out)


def _u16_vec16(c: Cursor) -> tuple[int, ...]:
    return _u16_list(c.vec16())


def _point_formats(c: Cursor) -> tuple[int, ...]:
    return _u8_list(c.vec8())


def _client_hello_from(c: Cursor) -> ClientHello:
    legacy_version = c.u16()
    c.skip(32)  # random
    c.vec8()  # legacy_session_id
    if legacy_version >> 8 == 0xFE:
        c.vec8()  # DTLS HelloVerifyRequest cookie
    suites = c.vec16()
    # A stray odd byte is ignored: the vector length keeps the rest in sync.
    n = suites.remaining() >> 1
    cipher_suites = struct.unpack(f"!{n}H", suites.take(2 * n))
    c.vec8()  # compression methods
    exts = _Extensions(c)
    offered = _salvage(_client_versions, exts.get(EXT_SUPPORTED_VERSIONS), ())
    versions = tuple(v for v in offered if not is_grease(v))
    alpn_raw = _salvage(_alpn_list, exts.get(EXT_ALPN), ())
    return ClientHello(
        legacy_version=legacy_version,
        versions=versions or (legacy_version,),
        sni=_salvage(_sni, exts.get(EXT_SERVER_NAME), None),
        alpn=tuple(a.decode("utf-8", errors="replace") for a in alpn_raw),
        alpn_raw=alpn_raw,
        cipher_suites=cipher_suites,
        extensions=exts.types,
        groups=_salvage(_u16_vec16, exts.get(EXT_SUPPORTED_GROUPS), ()),
        ec_point_formats=_salvage(_point_formats, exts.get(EXT_EC_POINT_FORMATS), ()),
        signature_algorithms=_salvage(_u16_vec16, exts.get(EXT_SIGNATURE_ALGORITHMS), ()),
        key_share_groups=_salvage(_client_key_shares, exts.get(EXT_KEY_SHARE), ()),
        ech=EXT_ECH in exts.spans,
        sslv2=False,
    )


def _is_sslv2_record(body: bytes) -> bool:
    """A hello body that is really an SSLv2 record: its first byte has the high bit set.

    TLS hello versions start 0x03 or 0x7f; DTLS ones start 0xfe, excluded here.
    """
    return bool(body) and body[0] & 0x80 != 0 and body[0] != 0xFE


def parse_client_hello(body: bytes) -> ClientHello:
    """Parse a ClientHello handshake body (after the 4-byte header).

    The body is complete by construction, so running short is a ParseError.
    A body that is an SSLv2 record (high bit of the first byte set) is
    parsed as an SSLv2 CLIENT-HELLO.
    """
    if _is_sslv2_record(body):
        ch = parse_sslv2_client_hello(body)
        if ch is None:
            raise ParseError("truncated SSLv2 CLIENT-HELLO")
        return ch
    try:
        return _client_hello_from(Cursor(body, strict=True))
    except NeedMore as exc:  # only reachable through a non-strict cursor; be safe
        raise ParseError("truncated ClientHello") from exc


# --------------------------------------------------------------------------
# ServerHello
# --------------------------------------------------------------------------

def _selected_version(c: Cursor) -> int:
    return c.u16()


def _server_alpn(c: Cursor) -> str | None:
    names = _alpn_list(c)
    return names[0].decode("utf-8", errors="replace") if names else None


def _server_hello_from(c: Cursor) -> ServerHello:
    legacy_version = c.u16()
    random = c.take(32)
    # TLS 1.3 drafts up to 21 put the draft version here and had no
    # session id or compression; from draft 22 on it is 0x0303 + supported_versions.
    early_draft = legacy_version >> 8 == 0x7F
    if not early_draft:
        c.vec8()  # legacy_session_id_echo
    cipher_suite = c.u16()
    if not early_draft:
        c.u8()  # legacy_compression_method
    exts = _Extensions(c)
    # Both a ServerHello key share (group, key) and an HRR one (group) start with the group.
    return ServerHello(
        legacy_version=legacy_version,
        version=_salvage(_selected_version, exts.get(EXT_SUPPORTED_VERSIONS), legacy_version),
        cipher_suite=cipher_suite,
        extensions=exts.types,
        alpn=_salvage(_server_alpn, exts.get(EXT_ALPN), None),
        hello_retry_request=random == HRR_RANDOM,
        key_share_group=_salvage(_selected_version, exts.get(EXT_KEY_SHARE), None),
    )


def parse_server_hello(body: bytes) -> ServerHello:
    """Parse a ServerHello (or HelloRetryRequest) handshake body.

    A body that is an SSLv2 record is parsed as an SSLv2 SERVER-HELLO.
    """
    if _is_sslv2_record(body):
        sh = parse_sslv2_server_hello(body)
        if sh is None:
            raise ParseError("truncated SSLv2 SERVER-HELLO")
        return sh
    try:
        return _server_hello_from(Cursor(body, strict=True))
    except NeedMore as exc:
        raise ParseError("truncated ServerHello") from exc


# --------------------------------------------------------------------------
# SSLv2 (RFC 6101 appendix E / the 1995 SSL 2.0 draft)
# --------------------------------------------------------------------------

def _sslv2_body(record: bytes) -> Cursor | None:
    """A strict cursor over an SSLv2 record's body, or None when it is incomplete."""
    if len(record) < 3:
        return None
    if record[0] & 0x80:
        start, length = 2, (record[0] & 0x7F) << 8 | record[1]
    else:  # three-byte header: only used with padding, i.e. never for a hello in practice
        start, length = 3, (record[0] & 0x3F) << 8 | record[1]
    if len(record) < start + length:
        return None
    return Cursor(record, start, start + length, strict=True)


def _cipher_specs(c: Cursor, n: int) -> tuple[int, ...]:
    if n % 3:
        raise ParseError("SSLv2 cipher specs are 3 bytes each")
    specs = c.sub(n)
    return tuple(int.from_bytes(specs.take(3), "big") for _ in range(n // 3))


def parse_sslv2_client_hello(record: bytes) -> ClientHello | None:
    """Parse a whole SSLv2 CLIENT-HELLO record (header included); None if incomplete.

    Clients of the 1990s sent this format to offer SSL 2.0 *and* SSL 3/TLS 1.0
    at once; the version field says the highest they speak.
    """
    c = _sslv2_body(record)
    if c is None:
        return None
    if c.u8() != _SSLV2_CLIENT_HELLO:
        raise ParseError("not an SSLv2 CLIENT-HELLO")
    version = c.u16()
    specs_len, session_len, challenge_len = c.u16(), c.u16(), c.u16()
    specs = _cipher_specs(c, specs_len)
    c.skip(session_len)
    c.skip(challenge_len)
    return ClientHello(
        legacy_version=version, versions=(version,), sni=None, alpn=(), alpn_raw=(),
        cipher_suites=specs, extensions=(), groups=(), ec_point_formats=(),
        signature_algorithms=(), key_share_groups=(), ech=False, sslv2=True,
    )


def parse_sslv2_server_hello(record: bytes) -> ServerHello | None:
    """Parse a whole SSLv2 SERVER-HELLO record; the negotiated version is SSL 2.0."""
    c = _sslv2_body(record)
    if c is None:
        return None
    if c.u8() != _SSLV2_SERVER_HELLO:
        raise ParseError("not an SSLv2 SERVER-HELLO")
    c.u8()  # session id hit
    c.u8()  # certificate type
    version = c.u16()
    cert_len, specs_len, conn_id_len = c.u16(), c.u16(), c.u16()
    c.skip(cert_len)
    specs = _cipher_specs(c, specs_len)
    c.skip(conn_id_len)
    return ServerHello(
        legacy_version=version, version=0x0002, cipher_suite=specs[0] if specs else 0,
        extensions=(), alpn=None, hello_retry_request=False, key_share_group=None, sslv2=True,
    )


# --------------------------------------------------------------------------
# Record layer
# --------------------------------------------------------------------------

def _record_version_ok(major: int, minor: int) -> bool:
    return (major == 3 and minor <= 4) or major == 0x7F


def looks_like_tls(data: bytes) -> bool:
    """Cheap sniff of a stream's first bytes: a TLS record header or an SSLv2 hello.

    Needs 3 bytes (7 to check an SSLv2 hello's version); fewer gives False.
    """
    if len(data) < 3:
        return False
    if data[0] & 0x80:
        return _sslv2_hello_start(data)
    is_record_type = CHANGE_CIPHER_SPEC <= data[0] <= APPLICATION_DATA
    return is_record_type and _record_version_ok(data[1], data[2])


def _sslv2_version_ok(v: int) -> bool:
    return v == 0x0002 or 0x0300 <= v <= 0x0304


def _sslv2_hello_start(data: bytes) -> bool:
    """An SSLv2 two-byte record header followed by a CLIENT-HELLO or SERVER-HELLO."""
    if data[2] == _SSLV2_CLIENT_HELLO:
        return len(data) < 5 or _sslv2_version_ok(data[3] << 8 | data[4])
    if data[2] == _SSLV2_SERVER_HELLO:
        return len(data) < 7 or _sslv2_version_ok(data[5] << 8 | data[6])
    return False


def _read_sslv2(stream: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    if len(stream) < 3:
        return [], False
    if not _sslv2_hello_start(stream):
        raise ParseError("neither a TLS record nor an SSLv2 hello")
    length = 2 + ((stream[0] & 0x7F) << 8 | stream[1])
    if len(stream) < length:
        return [], False
    msg_type = CLIENT_HELLO if stream[2] == _SSLV2_CLIENT_HELLO else SERVER_HELLO
    return [(msg_type, bytes(stream[:length]))], True


def _drain(buf: bytearray, out: list[tuple[int, bytes]]) -> None:
    """Move every complete handshake message from ``buf`` to ``out``."""
    while len(buf) >= 4:
        n = buf[1] << 16 | buf[2] << 8 | buf[3]
        if len(buf) < 4 + n:
            return
        out.append((buf[0], bytes(buf[4:4 + n])))
        del buf[:4 + n]


def split_handshake(data: bytes) -> list[tuple[int, bytes]]:
    """Complete handshake messages of a record-less stream, e.g. QUIC's CRYPTO stream.

    QUIC carries TLS handshake messages without the record layer; a trailing
    incomplete message is simply not returned yet.
    """
    out: list[tuple[int, bytes]] = []
    _drain(bytearray(data), out)
    return out


def _hello_may_follow(msgs: list[tuple[int, bytes]]) -> int | None:
    """After a ChangeCipherSpec, which plaintext hello may still come (or None).

    TLS 1.3 peers in middlebox-compatibility mode send a dummy CCS right after
    a HelloRetryRequest (server) or before the second ClientHello (client)
    (RFC 8446 appendix D.4). In every other case records after a CCS are
    encrypted.
    """
    if len(msgs) == 1 and msgs[0][0] == CLIENT_HELLO:
        return CLIENT_HELLO
    if msgs and msgs[-1][0] == SERVER_HELLO and msgs[-1][1][2:34] == HRR_RANDOM:
        return SERVER_HELLO
    return None


def _starts_hello(frag: bytes, msg_type: int) -> bool:
    """Does a record fragment begin a TLS 1.2-framed hello (not an encrypted Finished)?"""
    return (
        len(frag) >= 6
        and frag[0] == msg_type
        and frag[4:6] == b"\x03\x03"
        and (frag[1] << 16 | frag[2] << 8 | frag[3]) >= 38
    )


def read_handshake_messages(stream: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """Complete plaintext handshake messages of one direction of a connection.

    Returns ``(messages, done)``; ``done`` means no further plaintext
    handshake can follow. An incomplete trailing record is left for the next
    call; a stream that does not start like TLS raises ParseError.
    """
    if not stream:
        return [], False
    if stream[0] & 0x80:
        return _read_sslv2(stream)
    msgs: list[tuple[int, bytes]] = []
    buf = bytearray()
    expect: int | None = None  # after a CCS: the only hello type still possible
    after_ccs = False
    pos, end = 0, len(stream)
    while end - pos >= 5:
        ctype, major, minor = stream[pos], stream[pos + 1], stream[pos + 2]
        length = stream[pos + 3] << 8 | stream[pos + 4]
        if not (CHANGE_CIPHER_SPEC <= ctype <= APPLICATION_DATA and _record_version_ok(major, minor)
                and length <= _MAX_RECORD):
            if pos == 0:
                raise ParseError("not a TLS record header")
            return msgs, True  # garbage after real records: nothing more to read in clear
        if end - pos - 5 < length:
            break
        frag = stream[pos + 5:pos + 5 + length]
        pos += 5 + length
        if ctype == HANDSHAKE:
            if after_ccs and not buf and (expect is None or not _starts_hello(frag, expect)):
                return msgs, True  # an encrypted Finished
            buf += frag
            _drain(buf, msgs)
        elif ctype == CHANGE_CIPHER_SPEC and not buf and not after_ccs:
            expect = _hello_may_follow(msgs)
            if expect is None:
                return msgs, True
            after_ccs = True
        else:
            return msgs, True
    return msgs, False
