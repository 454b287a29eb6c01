"""QUIC handshakes: the TLS ClientHello and ServerHello inside QUIC Initial packets.

QUIC (RFC 9000) carries its TLS 1.3 handshake in CRYPTO frames. The first
flight travels in *Initial* packets, which are encrypted, but with keys that
anyone can derive from the client's first Destination Connection ID and a
per-version salt (RFC 9001 §5.2). A passive monitor can therefore read the
ClientHello (server name, ALPN, offered versions) and the ServerHello
(negotiated version, cipher) of every QUIC connection, as Zeek, Suricata and
Wireshark do. Everything after the Initial packets needs the TLS secrets and
is out of reach.

This module is pure: no I/O, no clock. :func:`parse_long_header` reads the
version-independent long header (RFC 8999) and the v1-style fields behind it;
:func:`initial_keys` and :func:`decrypt_initial` remove Initial protection;
:func:`parse_frames` reads the frames an Initial may carry; and
:class:`QuicHandshake` is the per-flow state that ties them together:
reassembling each direction's CRYPTO stream (out of order, overlapping,
split over several packets, as Chrome sends it) and handing it to the same
TLS parser that serves TLS over TCP.

Decisions worth knowing:

* Versions: v1, v2 (RFC 9369: its own salt, HKDF labels and long-header type
  bits), and drafts 29 to 34. Drafts 29-32 use the draft-29 salt; drafts 33
  and 34 already use the final v1 salt and Retry key (quicwg/base-drafts PR
  #4431 "Final salt and retry keys"; Wireshark's packet-quic.c makes the same
  split). Any other version is reported as unknown and not decrypted.
* Initial keys come from the client's *original* DCID, which the flow state
  remembers: the client switches to the server's connection ID after the
  first server Initial, and after a Retry it must use the Retry's Source
  Connection ID (RFC 9001 §5.2). A client Initial that fails with the
  remembered DCID is retried with its own DCID (a new attempt after a Retry
  or Version Negotiation we missed, or a capture that starts late); if that
  works, it becomes the original DCID. Retry packets change the state only if
  their integrity tag verifies (RFC 9001 §5.8).
* The CRYPTO stream of each direction is kept in a bounded buffer (64 KiB by
  default); data beyond the bound is dropped and counted, never buffered. The
  first copy of any byte wins, as in TCP reassembly.
* Parsing failures are counted, salvaged where possible and recorded in
  ``error``; :meth:`QuicHandshake.feed` never raises.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import tls
from .wire import ParseError

__all__ = [
    "QUIC_V1",
    "QUIC_V2",
    "ConnectionClose",
    "Frames",
    "InitialKeys",
    "LongHeader",
    "ParseError",
    "QuicHandshake",
    "QuicStats",
    "decode_packet_number",
    "decrypt_initial",
    "hkdf_expand_label",
    "initial_keys",
    "iter_long_headers",
    "parse_frames",
    "parse_long_header",
    "protect_initial",
    "retry_tag_valid",
    "side_keys",
    "version_name",
]

QUIC_V1, QUIC_V2 = 0x00000001, 0x6B3343CF
VERSION_NEGOTIATION = 0x00000000

_MAX_VARINT = (1 << 62) - 1
_MAX_CID_V1 = 20  # RFC 9000 §17.2: longer connection IDs in a v1 header are invalid
_SAMPLE_LEN = 16
_TAG_LEN = 16
#: Distinct connection IDs a flow may try keys for: bounds the work a spoofed flood can cause.
_MAX_KEY_TRIES = 8
#: Separate pieces a CRYPTO buffer keeps; a stream shredded finer than this is not real.
_MAX_PIECES = 256
_CLIENT, _SERVER = 0, 1  # sides; also the index into initial_keys()
_SIDE_NAMES = ("client", "server")
#: Datagrams a flow gets to complete its handshake before it is given up on.
_MAX_DATAGRAMS = 64


# --------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------

_V1_TYPES = ("initial", "0rtt", "handshake", "retry")  # by the two type bits
_V2_TYPES = ("retry", "initial", "0rtt", "handshake")  # RFC 9369 §3.2


@dataclass(frozen=True, slots=True)
class _Version:
    name: str
    salt: bytes
    labels: tuple[bytes, bytes, bytes]  # key, iv, hp
    types: tuple[str, str, str, str]
    retry_key: bytes
    retry_nonce: bytes


_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_DRAFT29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_LABELS_V1 = (b"quic key", b"quic iv", b"quic hp")
_LABELS_V2 = (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")
_RETRY_V1 = (bytes.fromhex("be0c690b9f66575a1d766b54e368c84e"),
             bytes.fromhex("461599d35d632bf2239825bb"))
_RETRY_V2 = (bytes.fromhex("8fb4b01b56ac48e260fbcbcead7ccc92"),
             bytes.fromhex("d86969bc2d7c6d9990efb04a"))
_RETRY_DRAFT29 = (bytes.fromhex("ccce187ed09a09d05728155a6cb96be1"),
                  bytes.fromhex("e54930f97f2136f0530a8c1c"))

_VERSIONS: dict[int, _Version] = {
    QUIC_V1: _Version("QUICv1", _SALT_V1, _LABELS_V1, _V1_TYPES, *_RETRY_V1),
    QUIC_V2: _Version("QUICv2", _SALT_V2, _LABELS_V2, _V2_TYPES, *_RETRY_V2),
}
for _d in range(29, 35):
    _old = _d <= 32
    _VERSIONS[0xFF000000 | _d] = _Version(
        f"draft-{_d}", _SALT_DRAFT29 if _old else _SALT_V1, _LABELS_V1, _V1_TYPES,
        *(_RETRY_DRAFT29 if _old else _RETRY_V1),
    )
del _d, _old


def version_name(v: int) -> str:
    """A QUIC version for people and metrics labels: "QUICv1", "draft-29", "unknown (0x...)"."""
    known = _VERSIONS.get(v)
    if known is not None:
        return known.name
    if v == VERSION_NEGOTIATION:
        return "version negotiation"
    return f"unknown (0x{v:08x})"


def _is_reserved(v: int) -> bool:
    """A version reserved to exercise version negotiation (RFC 9000 §15: 0x?a?a?a?a)."""
    return v & 0x0F0F0F0F == 0x0A0A0A0A


# --------------------------------------------------------------------------
# Long headers
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LongHeader:
    """One long-header packet inside a UDP datagram.

    ``packet_type`` is "initial", "0rtt", "handshake", "retry",
    "version_negotiation", or "unknown" for a version this module does not
    know (whose fields after the connection IDs cannot be read). Offsets are
    into the datagram: the packet spans ``offset:end`` and its (protected)
    packet number starts at ``pn_offset`` (``== end`` when it has none).
    ``token`` is an Initial's token or a Retry's token; ``versions`` lists a
    Version Negotiation packet's supported versions.
    """

    first_byte: int
    version: int
    dcid: bytes
    scid: bytes
    packet_type: str
    offset: int
    pn_offset: int
    end: int
    token: bytes = b""
    versions: tuple[int, ...] = ()


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A QUIC variable-length integer (RFC 9000 §16) at ``pos``, and the position after it."""
    if pos >= end:
        raise ParseError(f"variable-length integer overruns its container at {pos}")
    first = buf[pos]
    n = 1 << (first >> 6)
    if pos + n > end:
        raise ParseError(f"variable-length integer overruns its container at {pos}")
    value = first & 0x3F
    for i in range(pos + 1, pos + n):
        value = value << 8 | buf[i]
    return value, pos + n


def parse_long_header(datagram: bytes, offset: int = 0) -> LongHeader | None:
    """The long-header packet starting at ``offset``; None if the byte there is not one.

    A short-header packet (or trailing padding) gives None. A long header that
    is cut short or whose Length overruns the datagram raises ParseError: a
    datagram is complete, so nothing more is coming.
    """
    end = len(datagram)
    if offset >= end or not datagram[offset] & 0x80:
        return None
    if offset + 7 > end:
        raise ParseError("long header shorter than its fixed part")
    first = datagram[offset]
    version = int.from_bytes(datagram[offset + 1:offset + 5], "big")
    pos = offset + 5
    dlen = datagram[pos]
    dcid = datagram[pos + 1:pos + 1 + dlen]
    pos += 1 + dlen
    if pos >= end:
        raise ParseError("long header ends inside its connection IDs")
    slen = datagram[pos]
    scid = datagram[pos + 1:pos + 1 + slen]
    pos += 1 + slen
    if pos > end:
        raise ParseError("long header ends inside its connection IDs")
    dcid, scid = bytes(dcid), bytes(scid)

    if version == VERSION_NEGOTIATION:
        if (end - pos) % 4:
            raise ParseError("Version Negotiation list is not a whole number of versions")
        versions = tuple(int.from_bytes(datagram[i:i + 4], "big") for i in range(pos, end, 4))
        return LongHeader(first, version, dcid, scid, "version_negotiation", offset, end, end,
                          versions=versions)
    known = _VERSIONS.get(version)
    if known is None:
        # Only the invariants (RFC 8999) hold: the rest of the datagram is this packet.
        return LongHeader(first, version, dcid, scid, "unknown", offset, end, end)
    if dlen > _MAX_CID_V1 or slen > _MAX_CID_V1:
        raise ParseError(f"connection ID longer than {_MAX_CID_V1} bytes in a {known.name} header")
    ptype = known.types[(first >> 4) & 0x03]
    token = b""
    if ptype == "retry":
        if end - pos < _TAG_LEN:
            raise ParseError("Retry packet shorter than its integrity tag")
        return LongHeader(first, version, dcid, scid, ptype, offset, end, end,
                          token=bytes(datagram[pos:end - _TAG_LEN]))
    if ptype == "initial":
        tlen, pos = _varint(datagram, pos, end)
        if tlen > end - pos:
            raise ParseError("Initial token overruns the datagram")
        token = bytes(datagram[pos:pos + tlen])
        pos += tlen
    length, pos = _varint(datagram, pos, end)
    if length > end - pos:
        raise ParseError(f"packet Length {length} overruns the datagram ({end - pos} bytes left)")
    return LongHeader(first, version, dcid, scid, ptype, offset, pos, pos + length, token=token)


def iter_long_headers(datagram: bytes) -> list[LongHeader]:
    """Every long-header packet coalesced in a datagram (RFC 9000 §12.2), in order.

    Stops at a short-header packet (which runs to the end of the datagram),
    at padding, or at a packet of an unknown version (whose length is unknown).
    Raises ParseError like :func:`parse_long_header`.
    """
    out: list[LongHeader] = []
    off = 0
    while True:
        hdr = parse_long_header(datagram, off)
        if hdr is None:
            return out
        out.append(hdr)
        if hdr.end <= off:  # an empty Length cannot hold a packet number; stop rather than loop
            return out
        off = hdr.end


# --------------------------------------------------------------------------
# Keys and packet protection (RFC 9001 §5)
# --------------------------------------------------------------------------

def _hkdf_info(label: bytes, length: int, context: bytes = b"") -> bytes:
    full = b"tls13 " + label
    return length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) + context


def hkdf_expand_label(secret: bytes, label: bytes, length: int, context: bytes = b"") -> bytes:
    """TLS 1.3 HKDF-Expand-Label with SHA-256 (RFC 8446 §7.1)."""
    info = _hkdf_info(label, length, context)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(secret, block + info + bytes((counter,)), "sha256")
        out += block
        counter += 1
    return out[:length]


def _expand32(secret: bytes, info_and_counter: bytes, length: int) -> bytes:
    """HKDF-Expand of at most one SHA-256 block, its info (and counter 1) precomputed."""
    return hmac.digest(secret, info_and_counter, "sha256")[:length]


# The Initial key schedule's fixed HkdfLabels, each with the block counter 0x01 appended.
_INFO: dict[tuple[bytes, int], bytes] = {
    (label, n): _hkdf_info(label, n) + b"\x01"
    for labels in (_LABELS_V1, _LABELS_V2)
    for label, n in zip(labels, (16, 12, 16), strict=True)
}
_INFO_CLIENT_IN = _hkdf_info(b"client in", 32) + b"\x01"
_INFO_SERVER_IN = _hkdf_info(b"server in", 32) + b"\x01"


class InitialKeys:
    """One direction's Initial packet protection: AEAD key and IV, header protection key."""

    __slots__ = ("secret", "key", "iv", "hp", "_iv", "_aead", "_hp")

    def __init__(self, secret: bytes, labels: tuple[bytes, bytes, bytes]):
        self.secret = secret
        self.key = _expand32(secret, _INFO[labels[0], 16], 16)
        self.iv = _expand32(secret, _INFO[labels[1], 12], 12)
        self.hp = _expand32(secret, _INFO[labels[2], 16], 16)
        self._iv = int.from_bytes(self.iv, "big")
        self._aead = AESGCM(self.key)
        # ECB over one block is stateless, so one encryptor serves every packet.
        self._hp = Cipher(algorithms.AES(self.hp), modes.ECB()).encryptor()

    def mask(self, sample: bytes) -> bytes:
        """The header protection mask for a 16-byte ciphertext sample (RFC 9001 §5.4.3)."""
        return self._hp.update(sample)

    def nonce(self, pn: int) -> bytes:
        return (self._iv ^ pn).to_bytes(12, "big")

    def open(self, pn: int, ciphertext: bytes, header: bytes) -> bytes:
        """Decrypt and authenticate a payload; raises ``cryptography``'s InvalidTag."""
        return self._aead.decrypt(self.nonce(pn), ciphertext, header)

    def seal(self, pn: int, plaintext: bytes, header: bytes) -> bytes:
        return self._aead.encrypt(self.nonce(pn), plaintext, header)


def _version(version: int) -> _Version:
    known = _VERSIONS.get(version)
    if known is None:
        raise ParseError(f"no Initial keys for {version_name(version)}")
    return known


def initial_keys(dcid: bytes, version: int = QUIC_V1) -> tuple[InitialKeys, InitialKeys]:
    """(client, server) Initial keys of a connection whose client first sent to ``dcid``.

    Raises ParseError for a version without known Initial protection.
    """
    return side_keys(dcid, version, _CLIENT), side_keys(dcid, version, _SERVER)


def side_keys(dcid: bytes, version: int, side: int) -> InitialKeys:
    """One side's Initial keys (0 client, 1 server): half the work of :func:`initial_keys`."""
    known = _version(version)
    initial = hmac.digest(known.salt, dcid, "sha256")  # HKDF-Extract(salt, dcid)
    info = _INFO_SERVER_IN if side else _INFO_CLIENT_IN
    return InitialKeys(_expand32(initial, info, 32), known.labels)


def decode_packet_number(largest: int, truncated: int, nbits: int) -> int:
    """The full packet number closest to ``largest + 1`` (RFC 9000 appendix A.3)."""
    expected = largest + 1
    win = 1 << nbits
    hwin = win >> 1
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def decrypt_initial(datagram: bytes, hdr: LongHeader, keys: InitialKeys,
                    largest_pn: int = -1) -> tuple[int, bytes]:
    """Remove header and packet protection from an Initial: ``(packet number, payload)``.

    Raises ParseError for a packet too short to sample and ``InvalidTag`` when
    the keys are wrong or the packet was altered.
    """
    pn_off, end = hdr.pn_offset, hdr.end
    sample_at = pn_off + 4  # the sample assumes a 4-byte packet number (RFC 9001 §5.4.2)
    if sample_at + _SAMPLE_LEN > end:
        raise ParseError("packet too short for a header protection sample")
    mask = keys.mask(bytes(datagram[sample_at:sample_at + _SAMPLE_LEN]))
    first = hdr.first_byte ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(datagram[pn_off + i] ^ mask[1 + i] for i in range(pn_len))
    pn = decode_packet_number(largest_pn, int.from_bytes(pn_bytes, "big"), 8 * pn_len)
    header = bytes((first,)) + bytes(datagram[hdr.offset + 1:pn_off]) + pn_bytes
    return pn, keys.open(pn, bytes(datagram[pn_off + pn_len:end]), header)


def _encode_varint(v: int, size: int | None = None) -> bytes:
    if size is None:
        size = 1 if v < 0x40 else 2 if v < 0x4000 else 4 if v < 0x40000000 else 8
    if v >= 1 << (8 * size - 2):
        raise ValueError(f"{v} does not fit a {size}-byte variable-length integer")
    prefix = {1: 0x00, 2: 0x40, 4: 0x80, 8: 0xC0}[size]
    out = v.to_bytes(size, "big")
    return bytes((out[0] | prefix,)) + out[1:]


def protect_initial(keys: InitialKeys, version: int, dcid: bytes, scid: bytes, pn: int,
                    payload: bytes, token: bytes = b"", pn_len: int = 4) -> bytes:
    """Build a protected Initial packet (for tests and tools; the monitor only reads).

    The Length field is always two bytes, as in RFC 9001 appendix A. The
    payload must be long enough for a header protection sample.
    """
    known = _VERSIONS[version]
    ptype = known.types.index("initial")
    first = 0xC0 | ptype << 4 | (pn_len - 1)
    header = (bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
              + bytes((len(scid),)) + scid + _encode_varint(len(token)) + token
              + _encode_varint(pn_len + len(payload) + _TAG_LEN, 2)
              + (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big"))
    sealed = keys.seal(pn, payload, header)
    pn_off = len(header) - pn_len
    sample = sealed[4 - pn_len:4 - pn_len + _SAMPLE_LEN]
    mask = keys.mask(sample)
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_off + i] ^= mask[1 + i]
    return bytes(out)


def retry_tag_valid(datagram: bytes, hdr: LongHeader, odcid: bytes) -> bool:
    """Does a Retry's integrity tag verify against the client's original DCID (RFC 9001 §5.8)?"""
    known = _VERSIONS.get(hdr.version)
    if known is None or hdr.packet_type != "retry":
        return False
    pseudo = bytes((len(odcid),)) + odcid + bytes(datagram[hdr.offset:hdr.end - _TAG_LEN])
    try:
        AESGCM(known.retry_key).decrypt(known.retry_nonce,
                                        bytes(datagram[hdr.end - _TAG_LEN:hdr.end]), pseudo)
    except InvalidTag:
        return False
    return True


# --------------------------------------------------------------------------
# Frames (RFC 9000 §19) of an Initial packet
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ConnectionClose:
    """A CONNECTION_CLOSE frame: transport (0x1c) or application (0x1d) error."""

    error_code: int
    frame_type: int | None  # the frame that triggered it (transport close only)
    reason: str
    application: bool


@dataclass(frozen=True, slots=True)
class Frames:
    """The frames of one decrypted Initial payload.

    ``error`` says why reading stopped early (an unknown or forbidden frame
    type, a frame overrunning the payload); the frames before it are kept.
    """

    crypto: tuple[tuple[int, bytes], ...]
    acks: int
    pings: int
    padding: int
    close: ConnectionClose | None
    error: str | None


_NONZERO = re.compile(b"[^\x00]")
_PADDING, _PING, _ACK, _ACK_ECN, _CRYPTO = 0x00, 0x01, 0x02, 0x03, 0x06
_CLOSE, _CLOSE_APP = 0x1C, 0x1D


def _skip_ack(buf: bytes, pos: int, end: int, ecn: bool) -> int:
    _, pos = _varint(buf, pos, end)  # largest acknowledged
    _, pos = _varint(buf, pos, end)  # ACK delay
    ranges, pos = _varint(buf, pos, end)
    _, pos = _varint(buf, pos, end)  # first ACK range
    if ranges > (end - pos) // 2:  # each further range is at least two bytes
        raise ParseError("ACK range count overruns the payload")
    for _ in range(ranges):
        _, pos = _varint(buf, pos, end)  # gap
        _, pos = _varint(buf, pos, end)  # range length
    if ecn:
        for _ in range(3):  # ECT0, ECT1, ECN-CE counts
            _, pos = _varint(buf, pos, end)
    return pos


def _close(buf: bytes, pos: int, end: int, application: bool) -> tuple[ConnectionClose, int]:
    code, pos = _varint(buf, pos, end)
    ftype = None
    if not application:
        ftype, pos = _varint(buf, pos, end)
    rlen, pos = _varint(buf, pos, end)
    if rlen > end - pos:
        raise ParseError("CONNECTION_CLOSE reason overruns the payload")
    reason = bytes(buf[pos:pos + rlen]).decode("utf-8", errors="replace")
    return ConnectionClose(code, ftype, reason, application), pos + rlen


def parse_frames(payload: bytes) -> Frames:
    """Read the frames of a decrypted Initial payload; salvage what precedes an error.

    An Initial may carry only PADDING, PING, ACK, CRYPTO and CONNECTION_CLOSE
    (RFC 9000 §12.4); anything else is a protocol violation and stops reading.
    """
    crypto: list[tuple[int, bytes]] = []
    acks = pings = padding = 0
    close: ConnectionClose | None = None
    error: str | None = None
    pos, end = 0, len(payload)
    try:
        while pos < end:
            ftype = payload[pos]
            if ftype == _PADDING:
                m = _NONZERO.search(payload, pos)
                nxt = end if m is None else m.start()
                padding += nxt - pos
                pos = nxt
            elif ftype == _CRYPTO:
                off, pos = _varint(payload, pos + 1, end)
                n, pos = _varint(payload, pos, end)
                if n > end - pos:
                    raise ParseError(f"CRYPTO frame of {n} bytes overruns the payload")
                if off + n > _MAX_VARINT:
                    raise ParseError("CRYPTO frame beyond the largest stream offset 2^62-1")
                crypto.append((off, bytes(payload[pos:pos + n])))
                pos += n
            elif ftype == _PING:
                pings += 1
                pos += 1
            elif ftype in (_ACK, _ACK_ECN):
                pos = _skip_ack(payload, pos + 1, end, ftype == _ACK_ECN)
                acks += 1
            elif ftype in (_CLOSE, _CLOSE_APP):
                close, pos = _close(payload, pos + 1, end, ftype == _CLOSE_APP)
            else:
                # Frame types are varints; 0x40.. encodes a (long-form) type, never allowed here.
                raise ParseError(f"frame type 0x{ftype:02x} is not allowed in an Initial packet")
    except ParseError as exc:
        error = str(exc)
    return Frames(tuple(crypto), acks, pings, padding, close, error)


# --------------------------------------------------------------------------
# CRYPTO stream reassembly
# --------------------------------------------------------------------------

class _CryptoStream:
    """One direction's CRYPTO stream: first copy of each byte wins, bounded by ``limit``.

    ``pieces`` are the received ranges, sorted, disjoint and not touching.
    """

    __slots__ = ("limit", "buf", "pieces", "consumed")

    def __init__(self, limit: int):
        self.limit = limit
        self.buf = bytearray()
        self.pieces: list[tuple[int, int]] = []
        self.consumed = 0  # bytes already handed over as complete handshake messages

    def add(self, offset: int, data: bytes) -> int:
        """Store a frame's data; returns how many of its bytes were dropped."""
        start, stop = offset, offset + len(data)
        if stop > self.limit:
            stop = max(start, self.limit)
        if start >= stop:
            return len(data)
        dropped = len(data) - (stop - start)
        if len(self.buf) < stop:
            self.buf.extend(bytes(stop - len(self.buf)))
        # Write only the gaps between what is already there.
        pieces = self.pieces
        cur = start
        for s, e in pieces:
            if e <= cur:
                continue
            if s >= stop:
                break
            if s > cur:
                self.buf[cur:s] = data[cur - offset:s - offset]
            cur = max(cur, e)
            if cur >= stop:
                break
        if cur < stop:
            self.buf[cur:stop] = data[cur - offset:stop - offset]
        # Merge: the pieces wholly before and after stay, the rest fuse with the new range.
        i = 0
        while i < len(pieces) and pieces[i][1] < start:
            i += 1
        j = i
        while j < len(pieces) and pieces[j][0] <= stop:
            j += 1
        if j > i:
            start, stop = min(start, pieces[i][0]), max(stop, pieces[j - 1][1])
        merged = pieces[:i] + [(start, stop)] + pieces[j:]
        if len(merged) > _MAX_PIECES:
            return len(data)  # not indexed: a stream shredded this finely is not a handshake
        self.pieces = merged
        return dropped

    def contiguous(self) -> int:
        """Bytes available from offset 0 without a gap."""
        p = self.pieces
        return p[0][1] if p and p[0][0] == 0 else 0

    def messages(self) -> list[tuple[int, bytes]]:
        """Complete handshake messages not yet handed over (parsed by ``tls.split_handshake``)."""
        have = self.contiguous()
        start = self.consumed
        if have - start < 4:
            return []
        b = self.buf
        need = 4 + (b[start + 1] << 16 | b[start + 2] << 8 | b[start + 3])
        if need > self.limit - start:
            raise ParseError(f"handshake message of {need} bytes does not fit the "
                             f"{self.limit}-byte CRYPTO buffer")
        if have - start < need:
            return []  # the next message is not complete yet: no copy, no parse
        msgs = tls.split_handshake(bytes(b[start:have]))
        self.consumed += sum(4 + len(body) for _, body in msgs)
        return msgs


# --------------------------------------------------------------------------
# Per-flow state
# --------------------------------------------------------------------------

@dataclass(slots=True)
class QuicStats:
    """Counters of one flow's QUIC inspection (metrics sum them; nothing here is per packet)."""

    datagrams: int = 0
    long_packets: int = 0
    short_packets: int = 0          # short-header (1-RTT) packets: ignored
    other_packets: int = 0          # 0-RTT and Handshake packets: their keys are not public
    initial_server: int = 0         # server Initials decrypted
    undecryptable: int = 0          # Initials whose protection could not be removed
    unknown_version_packets: int = 0
    version_negotiation: int = 0
    retries: int = 0                # Retry packets whose integrity tag verified
    retry_ignored: int = 0          # Retry packets discarded: bad tag, a second Retry, ...
    ignored_packets: int = 0        # coalesced behind a packet with another DCID (RFC 9000 §12.2)
    crypto_frames: int = 0
    crypto_bytes_dropped: int = 0   # CRYPTO data beyond the buffer bound or too fragmented
    frame_errors: int = 0           # payloads whose frames could not all be read
    parse_errors: int = 0           # malformed long headers and handshake messages


class QuicHandshake:
    """Per-flow state: fed every UDP payload of the flow (both directions) until done.

    ``feed`` returns True once the ClientHello and the (final, non-HRR)
    ServerHello are parsed, or the flow is hopeless (unknown version, a
    connection closed during the handshake, a malformed hello, or no
    handshake within the first 64 datagrams). It never raises.

    Attributes: ``version`` (the client's QUIC version, then the version of the
    server's Initials, i.e. the negotiated one), ``versions_seen`` (long-header
    versions in order of appearance), ``client_hello`` (the first one),
    ``server_hello`` (the latest one: a HelloRetryRequest until the real one
    arrives), ``initial_packets`` (client Initials decrypted), ``retry`` (a
    valid Retry was followed), ``vn_versions`` (from Version Negotiation),
    ``close`` (a CONNECTION_CLOSE seen in an Initial), ``error`` (why
    decryption or parsing failed; None once both hellos are read), ``stats``.
    """

    __slots__ = ("max_crypto", "version", "versions_seen", "client_hello", "server_hello",
                 "initial_packets", "retry", "error", "stats", "close", "vn_versions",
                 "done", "_odcid", "_keys", "_largest", "_streams", "_side_done")

    def __init__(self, max_crypto: int = 65536):
        self.max_crypto = max_crypto
        self.version: int | None = None  # the client's version, then the server's (negotiated)
        self.versions_seen: tuple[int, ...] = ()
        self.client_hello: tls.ClientHello | None = None
        self.server_hello: tls.ServerHello | None = None
        self.initial_packets = 0  # client Initials decrypted
        self.retry = False
        self.error: str | None = None
        self.stats = QuicStats()
        self.close: ConnectionClose | None = None
        self.vn_versions: tuple[int, ...] = ()  # from a Version Negotiation packet
        self.done = False
        self._odcid: bytes | None = None  # the DCID the Initial keys derive from
        self._keys: dict[tuple[int, bytes], list[InitialKeys | None]] = {}  # by side
        self._largest = [-1, -1]  # largest Initial packet number, by side
        self._streams: list[_CryptoStream | None] = [None, None]  # by side
        self._side_done = [False, False]  # hello parsed (or hopeless), by side

    @property
    def original_dcid(self) -> bytes | None:
        """The connection ID the Initial keys derive from (after a Retry: the Retry's SCID)."""
        return self._odcid

    # -- entry point -------------------------------------------------------

    def feed(self, payload: bytes, from_client: bool) -> bool:
        """Take one UDP payload of the flow; True when nothing more is to be learnt."""
        if self.done:
            return True
        st = self.stats
        st.datagrams += 1
        try:
            self._datagram(payload, from_client)
        except ParseError as exc:
            st.parse_errors += 1
            self.error = str(exc)
        except InvalidTag:  # decrypt paths catch it; kept so the promise holds regardless
            st.undecryptable += 1
        if not self.done and st.datagrams >= _MAX_DATAGRAMS:
            self._give_up(f"no complete handshake in the first {_MAX_DATAGRAMS} datagrams")
        return self.done

    # -- packets -------------------------------------------------------------

    def _datagram(self, dg: bytes, from_client: bool) -> None:
        st = self.stats
        if not dg or not dg[0] & 0x80:
            st.short_packets += 1
            return
        off, end = 0, len(dg)
        first_dcid: bytes | None = None
        while off < end and not self.done:
            hdr = parse_long_header(dg, off)
            if hdr is None:
                if dg[off]:  # a coalesced short-header packet; zeros are padding
                    st.short_packets += 1
                return
            st.long_packets += 1
            if first_dcid is None:
                first_dcid = hdr.dcid
            elif hdr.dcid != first_dcid:
                st.ignored_packets += 1
                off = hdr.end
                continue
            self._packet(dg, hdr, from_client)
            if hdr.end <= off:
                return
            off = hdr.end

    def _packet(self, dg: bytes, hdr: LongHeader, from_client: bool) -> None:
        st = self.stats
        v = hdr.version
        if v == VERSION_NEGOTIATION:
            # Only recorded: the client's next attempt shows itself by a new DCID or version
            # (see _initial), and a ClientHello already read stays (it names the server).
            if not from_client:  # a client never sends one; ignore it if it claims to
                st.version_negotiation += 1
                self.vn_versions = hdr.versions
            return
        if v not in self.versions_seen:
            self.versions_seen += (v,)
        if hdr.packet_type == "unknown":
            st.unknown_version_packets += 1
            if from_client and self.initial_packets == 0:
                self.version = v
                if not _is_reserved(v):  # a reserved version only asks for Version Negotiation
                    self._give_up(f"unknown version 0x{v:08x}")
            return
        ptype = hdr.packet_type
        if ptype == "initial":
            self._initial(dg, hdr, from_client)
        elif ptype == "retry":
            self._retry(dg, hdr, from_client)
        else:
            st.other_packets += 1

    def _retry(self, dg: bytes, hdr: LongHeader, from_client: bool) -> None:
        st = self.stats
        # A client processes at most one Retry, and none after a server Initial
        # (RFC 9000 §17.2.5.2); a Retry whose tag fails is forged or corrupt (RFC 9001 §5.8).
        if (from_client or self.retry or self._odcid is None or st.initial_server
                or not retry_tag_valid(dg, hdr, self._odcid)):
            st.retry_ignored += 1
            return
        st.retries += 1
        self.retry = True
        # The client's next Initial goes to the Retry's SCID, and so do the keys (RFC 9001 §5.2).
        self._odcid = hdr.scid
        self._largest[_SERVER] = -1

    def _keys_for(self, version: int, dcid: bytes, side: int) -> InitialKeys | None:
        k = (version, dcid)
        pair = self._keys.get(k)
        if pair is None:
            if len(self._keys) >= _MAX_KEY_TRIES:
                return None
            pair = self._keys[k] = [None, None]
        keys = pair[side]
        if keys is None:
            keys = pair[side] = side_keys(dcid, version, side)
        return keys

    def _open(self, dg: bytes, hdr: LongHeader, side: int,
              tries: tuple[bytes, ...]) -> tuple[bytes, int, bytes] | str:
        """Decrypt with the keys of each candidate DCID in turn: (dcid, pn, payload) or why not."""
        why = "no candidate connection ID"
        for dcid in tries:
            keys = self._keys_for(hdr.version, dcid, side)
            if keys is None:
                return f"more than {_MAX_KEY_TRIES} connection IDs tried"
            largest = self._largest[side] if dcid == self._odcid else -1
            try:
                pn, payload = decrypt_initial(dg, hdr, keys, largest)
            except InvalidTag:
                why = "authentication failed (not the Initial keys of this connection)"
                continue
            except ParseError as exc:
                return str(exc)
            return dcid, pn, payload
        return why

    def _initial(self, dg: bytes, hdr: LongHeader, from_client: bool) -> None:
        st = self.stats
        v = hdr.version
        side = _CLIENT if from_client else _SERVER
        odcid = self._odcid
        if from_client:
            if odcid is None:
                odcid = self._odcid = hdr.dcid
            tries = (odcid,) if hdr.dcid == odcid else (odcid, hdr.dcid)
        elif odcid is None:
            st.undecryptable += 1
            self.error = "server Initial before any client Initial: its keys are unknown"
            return
        else:
            tries = (odcid,)
        opened = self._open(dg, hdr, side, tries)
        if isinstance(opened, str):
            st.undecryptable += 1
            self.error = f"{'client' if from_client else 'server'} Initial undecryptable: {opened}"
            return
        dcid, pn, payload = opened
        if dcid != odcid:
            # A fresh attempt (after a Retry or Version Negotiation we did not see, or a
            # capture that began late): its DCID is the original one from now on.
            self._odcid = dcid
            self._largest = [-1, -1]
            if self.client_hello is None:
                self._streams[_CLIENT] = None
        if pn > self._largest[side]:
            self._largest[side] = pn
        if from_client:
            self.initial_packets += 1
            if st.initial_server == 0:
                self.version = v
        else:
            st.initial_server += 1
            self.version = v  # the server answers in the negotiated version (RFC 9368)
        self._frames(payload, side)

    def _frames(self, payload: bytes, side: int) -> None:
        st = self.stats
        frames = parse_frames(payload)
        if frames.error is not None:
            st.frame_errors += 1
        if frames.crypto:
            stream = self._streams[side]
            if stream is None:
                stream = self._streams[side] = _CryptoStream(self.max_crypto)
            for off, data in frames.crypto:
                st.crypto_frames += 1
                st.crypto_bytes_dropped += stream.add(off, data)
            self._hellos(stream, side)
        if frames.close is not None:
            self.close = frames.close
            c = frames.close
            self._give_up(f"connection closed by the {_SIDE_NAMES[side]} "
                          f"during the handshake: error 0x{c.error_code:x} {c.reason!r}")

    def _hellos(self, stream: _CryptoStream, side: int) -> None:
        if self._side_done[side]:
            return
        try:
            msgs = stream.messages()
        except ParseError as exc:
            self._side_failed(side, f"CRYPTO stream: {exc}")
            return
        for mtype, body in msgs:
            try:
                if side == _CLIENT:
                    if mtype != tls.CLIENT_HELLO:
                        self._side_failed(_CLIENT, f"client CRYPTO stream starts with "
                                                   f"message {mtype}")
                        return
                    self.client_hello = tls.parse_client_hello(body)
                    self._side_done[_CLIENT] = True
                    break
                if mtype != tls.SERVER_HELLO:
                    self._side_failed(_SERVER, f"server CRYPTO stream has message {mtype} "
                                               "before a ServerHello")
                    return
                self.server_hello = tls.parse_server_hello(body)
                if not self.server_hello.hello_retry_request:
                    self._side_done[_SERVER] = True
                    break
            except ParseError as exc:
                self.stats.parse_errors += 1
                self._side_failed(side, f"{('ClientHello', 'ServerHello')[side]}: {exc}")
                return
        if all(self._side_done):
            self.done = True
            if self.client_hello is not None and self.server_hello is not None:
                self.error = None  # earlier trouble did not stop the handshake being read

    # -- outcome -------------------------------------------------------------

    def _side_failed(self, side: int, why: str) -> None:
        self.error = why
        self._side_done[side] = True
        if all(self._side_done):
            self.done = True

    def _give_up(self, why: str) -> None:
        self.done = True
        if self.client_hello is None or self.server_hello is None:
            self.error = why
