"""DNS messages, and the map from server addresses to the names that resolved to them.

A flow record knows the server's address; the DNS answers a client received
just before connecting say which *name* it meant (the SNI says the same for
TLS, but not under ECH, for QUIC without a visible Initial, or for plaintext
protocols). This module has two halves:

* :func:`parse_message` turns one DNS message (RFC 1035) into a
  :class:`DnsMessage`: the header, the questions and the answer records with
  names decompressed and typed data for A, AAAA, CNAME and HTTPS/SVCB
  (RFC 9460); the authority and additional sections are walked and checked
  but not kept. :func:`split_tcp_messages` cuts a TCP stream into its
  length-prefixed messages (RFC 1035 4.2.2).
* :class:`NameMap` learns from responses which names each client resolved
  to which address, bounded in memory and honouring TTLs in packet time.

Both are pure: no I/O and no clock (time is passed in). The parser keeps the
project's contract (:mod:`residency_monitor.wire`): the only exception it
raises is :class:`ParseError`.

Compression pointers are where DNS parsers get hurt, so the rule is
dnspython's, and stricter than "the target is valid": a pointer must point
strictly before the place where the labels it continues began. That forbids
forward pointers and makes loops impossible (the offsets strictly decrease);
the number of pointers in one name is bounded too, and a name is at most 255
bytes in wire form. Suffixes already decoded are remembered per message, so a
hostile message of many names all pointing into one long chain costs no more
than a message of ordinary names.

Names are given in presentation form, case preserved: labels joined by
``.``, no trailing dot, the root as ``"."``, and any byte outside printable
ASCII (or a ``.`` or ``\\`` inside a label) escaped as ``\\DDD`` (RFC 1035
5.1), so a name is always an ASCII ``str``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from .wire import ParseError

__all__ = [
    "DnsMessage", "DohProvider", "KNOWN_DOH", "NameMap", "ParseError", "Question",
    "ResourceRecord", "Svcb", "address_text", "doh_provider", "is_response", "parse_message",
    "resolved", "split_tcp_messages",
]

# Record types and classes this module reads (IANA "Resource Record (RR) TYPEs").
TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_SVCB = 64
TYPE_HTTPS = 65
CLASS_IN = 1
OPCODE_QUERY = 0

# SvcParamKeys (RFC 9460 section 14.3.2).
SVC_ALPN = 1
SVC_PORT = 3
SVC_IPV4HINT = 4
SVC_ECH = 5
SVC_IPV6HINT = 6

MAX_NAME_WIRE = 255      # RFC 1035 3.1: a name's wire form, length octets included
MAX_POINTERS = 32        # compressors emit one pointer per name; chains of a few at most
HEADER = 12

_rr_header = struct.Struct("!HHIH").unpack_from
_header = struct.Struct("!HHHHHH").unpack_from

# Bytes that stand for themselves in presentation form: printable ASCII but
# '.' and '\\' (and the space, escaped so a name never contains one).
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in (0x2E, 0x5C))
_PLAIN_OR_DOT = _PLAIN + b"."


# --------------------------------------------------------------------------
# Parsed data
# --------------------------------------------------------------------------
# Questions and records are NamedTuples, not frozen dataclasses: as immutable,
# and built in 0.18 us instead of 0.44 (a frozen dataclass's __init__ sets
# every field through object.__setattr__), which was a third of a parse.

class Question(NamedTuple):
    name: str
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True)
class Svcb:
    """The RDATA of an HTTPS or SVCB record (RFC 9460); addresses are packed bytes."""

    priority: int                     # 0 is AliasMode: ``target`` is an alias, no parameters
    target: str                       # "." in ServiceMode means the owner name itself
    alpn: tuple[str, ...] = ()
    port: int | None = None
    ipv4hint: tuple[bytes, ...] = ()
    ipv6hint: tuple[bytes, ...] = ()
    ech: bool = False                 # an ECHConfigList is published: clients may use ECH


class ResourceRecord(NamedTuple):
    """One answer record.

    ``data`` depends on ``rtype``: the packed address (4 or 16 bytes) for A
    and AAAA, the target name for CNAME, an :class:`Svcb` for HTTPS and SVCB,
    and the raw RDATA for every other type (names inside it may still be
    compressed: they point into the message, which is not kept).
    """

    name: str
    rtype: int
    rclass: int
    ttl: int                          # seconds; with the top bit set it reads 0 (RFC 2181 8)
    data: bytes | str | Svcb


@dataclass(frozen=True, slots=True)
class DnsMessage:
    """A parsed DNS message.

    ``error`` is set when the authority or additional section is malformed
    (often a frame cut by the capture's snap length): the header, questions
    and answers before it are complete and correct, so they are kept rather
    than thrown away.
    """

    id: int
    flags: int                        # the raw 16-bit flags word
    qr: bool                          # a response
    opcode: int
    tc: bool                          # truncated: the full answer needs TCP
    rcode: int                        # the header's 4 bits (EDNS extended bits not applied)
    questions: tuple[Question, ...]
    answers: tuple[ResourceRecord, ...]
    authority_count: int
    additional_count: int
    error: str | None = None


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

def _text(labels: list[bytes]) -> str:
    """Labels in presentation form (no trailing dot); '' for none."""
    raw = b".".join(labels)
    if not raw.translate(None, _PLAIN_OR_DOT) and raw.count(b".") == len(labels) - 1:
        return raw.decode("ascii")
    return ".".join("".join(chr(b) if b in _PLAIN else "\\%03d" % b for b in label)
                    for label in labels)


# A decoded suffix: (text without trailing dot, wire length incl. the root byte, pointers used)
_Suffix = tuple[str, int, int]
_ROOT: _Suffix = ("", 1, 0)


def _name(buf: bytes, pos: int, end: int, cache: dict[int, _Suffix]) -> tuple[str, int]:
    """Decode the name at ``pos``; return its text and the offset just after it.

    ``cache`` maps offsets where a run of labels began to the suffix decoded
    from there; it is shared by all names of one message. Decoding from an
    offset gives the same result wherever the pointer came from (the rule is
    relative to that offset only), so the cache never changes an outcome.
    """
    if pos + 1 < end and buf[pos] >= 0xC0:
        # The common case: a lone pointer to a name decoded already (an owner
        # name pointing at the question).
        target = (buf[pos] & 0x3F) << 8 | buf[pos + 1]
        hit = cache.get(target)
        if hit is not None and target < pos and hit[2] < MAX_POINTERS:
            cache[pos] = (hit[0], hit[1], hit[2] + 1)
            return hit[0] or ".", pos + 2
    labels: list[bytes] = []
    # (offset where a run of labels began, labels, pointers and wire bytes before it)
    marks = [(pos, 0, 0, 0)]
    limit = pos                       # the next pointer must point strictly below this
    wire = 0                          # wire bytes of the labels read so far
    after = -1
    pointers = 0
    while True:
        if pos >= end:
            raise ParseError(f"name runs past the end of the message at offset {pos}")
        n = buf[pos]
        if n == 0:
            suffix = _ROOT
            if after < 0:
                after = pos + 1
            break
        if n < 0x40:
            stop = pos + 1 + n
            wire += n + 1
            if wire >= MAX_NAME_WIRE:
                raise ParseError("name longer than 255 bytes")
            if stop > end:
                raise ParseError(f"label runs past the end of the message at offset {pos}")
            labels.append(buf[pos + 1:stop])
            pos = stop
            continue
        if n < 0xC0:
            raise ParseError(f"unsupported label type {n >> 6:#x} at offset {pos}")
        if pos + 1 >= end:
            raise ParseError(f"compression pointer cut short at offset {pos}")
        target = (n & 0x3F) << 8 | buf[pos + 1]
        if target >= limit:
            raise ParseError(f"compression pointer at offset {pos} does not point backwards "
                             f"(to {target}, must be below {limit})")
        if after < 0:
            after = pos + 2
        pointers += 1
        hit = cache.get(target)
        if hit is not None:
            suffix = hit
            break
        if pointers > MAX_POINTERS:
            raise ParseError(f"more than {MAX_POINTERS} compression pointers in one name")
        marks.append((target, len(labels), pointers, wire))
        limit = pos = target
    text, swire, spointers = suffix
    if wire + swire > MAX_NAME_WIRE:
        raise ParseError("name longer than 255 bytes")
    if pointers + spointers > MAX_POINTERS:
        raise ParseError(f"more than {MAX_POINTERS} compression pointers in one name")
    # Remember the suffix starting at each run, from the innermost outwards.
    top = len(labels)
    top_wire = wire
    for off, idx, before, wire_before in reversed(marks):
        if idx < top:
            part = _text(labels[idx:top])
            text = part + "." + text if text else part
            swire += top_wire - wire_before
            top, top_wire = idx, wire_before
        cache[off] = (text, swire, spointers + pointers - before)
    return text or ".", after


def _svcb(buf: bytes, pos: int, end: int, cache: dict[int, _Suffix]) -> Svcb:
    if pos + 2 > end:
        raise ParseError("SVCB RDATA shorter than its priority")
    priority = buf[pos] << 8 | buf[pos + 1]
    # RFC 9460 says TargetName is never compressed; a pointer is read (backwards only) anyway.
    target, pos = _name(buf, pos + 2, end, cache)
    if pos > end:
        raise ParseError("SVCB target name overruns the RDATA")
    alpn: tuple[str, ...] = ()
    port = None
    v4: tuple[bytes, ...] = ()
    v6: tuple[bytes, ...] = ()
    ech = False
    last = -1
    while pos < end:
        if pos + 4 > end:
            raise ParseError("SvcParam header overruns the RDATA")
        key = buf[pos] << 8 | buf[pos + 1]
        start = pos + 4
        pos = start + (buf[pos + 2] << 8 | buf[pos + 3])
        if pos > end:
            raise ParseError(f"SvcParam {key} overruns the RDATA")
        if key <= last:  # RFC 9460 2.2: strictly increasing, else the RR is malformed
            raise ParseError(f"SvcParamKey {key} out of order")
        last = key
        size = pos - start
        if key == SVC_IPV4HINT:
            if not size or size % 4:
                raise ParseError("ipv4hint length is not a positive multiple of 4")
            v4 = tuple(buf[i:i + 4] for i in range(start, pos, 4))
        elif key == SVC_IPV6HINT:
            if not size or size % 16:
                raise ParseError("ipv6hint length is not a positive multiple of 16")
            v6 = tuple(buf[i:i + 16] for i in range(start, pos, 16))
        elif key == SVC_ECH:
            ech = True
        elif key == SVC_PORT:
            if size != 2:
                raise ParseError("port SvcParam is not 2 bytes")
            port = buf[start] << 8 | buf[start + 1]
        elif key == SVC_ALPN:
            ids = []
            i = start
            while i < pos:
                stop = i + 1 + buf[i]
                if stop > pos or stop == i + 1:
                    raise ParseError("bad alpn SvcParam")
                ids.append(buf[i + 1:stop].decode("ascii", "backslashreplace"))
                i = stop
            alpn = tuple(ids)
    return Svcb(priority, target, alpn, port, v4, v6, ech)


def _skip_name(buf: bytes, pos: int, end: int) -> int:
    """Walk over a name without following pointers (sections whose names are not kept)."""
    wire = 0
    while True:
        if pos >= end:
            raise ParseError("name runs past the end of the message")
        n = buf[pos]
        if n == 0:
            return pos + 1
        if n >= 0xC0:
            if pos + 2 > end:
                raise ParseError("compression pointer cut short")
            return pos + 2
        if n >= 0x40:
            raise ParseError(f"unsupported label type {n >> 6:#x}")
        wire += n + 1
        if wire >= MAX_NAME_WIRE:
            raise ParseError("name longer than 255 bytes")
        pos += n + 1


def parse_message(buf: bytes) -> DnsMessage:
    """Parse one whole DNS message (a UDP payload, or one message of a TCP stream).

    A message cut anywhere in its header, questions or answers, a bad
    compression pointer, a name over 255 bytes, or a malformed A, AAAA,
    CNAME or HTTPS/SVCB record raise :class:`ParseError`. Bytes after the
    last record (padding) are ignored.
    """
    if type(buf) is not bytes:
        buf = bytes(buf)
    end = len(buf)
    if end < HEADER:
        raise ParseError(f"DNS message of {end} bytes is shorter than its header")
    ident, flags, qdcount, ancount, nscount, arcount = _header(buf, 0)
    cache: dict[int, _Suffix] = {}
    pos = HEADER
    questions = []
    for _ in range(qdcount):
        name, pos = _name(buf, pos, end, cache)
        if pos + 4 > end:
            raise ParseError("question cut short")
        questions.append(Question(name, buf[pos] << 8 | buf[pos + 1],
                                  buf[pos + 2] << 8 | buf[pos + 3]))
        pos += 4
    answers = []
    for _ in range(ancount):
        # _name's fast path, inlined: most owner names are one pointer to a name
        # decoded already (the question's), and the call was a tenth of a parse
        hit = None
        if pos + 1 < end and buf[pos] >= 0xC0:
            target = (buf[pos] & 0x3F) << 8 | buf[pos + 1]
            hit = cache.get(target)
        if hit is not None and target < pos and hit[2] < MAX_POINTERS:
            name = hit[0] or "."
            pos += 2
        else:
            name, pos = _name(buf, pos, end, cache)
        if pos + 10 > end:
            raise ParseError("answer record header cut short")
        rtype, rclass, ttl, rdlength = _rr_header(buf, pos)
        pos += 10
        stop = pos + rdlength
        if stop > end:
            raise ParseError(f"answer RDATA of {rdlength} bytes overruns the message")
        data: bytes | str | Svcb
        if rtype in (TYPE_A, TYPE_AAAA):
            if rdlength != (4 if rtype == TYPE_A else 16):
                raise ParseError(f"address record of type {rtype} with {rdlength} bytes")
            data = buf[pos:stop]
        elif rtype == TYPE_CNAME:
            data, after = _name(buf, pos, end, cache)
            if after != stop:
                raise ParseError("CNAME target does not fill its RDATA")
        elif rtype in (TYPE_HTTPS, TYPE_SVCB):
            data = _svcb(buf, pos, stop, cache)
        else:
            data = bytes(buf[pos:stop])
        answers.append(ResourceRecord(name, rtype, rclass, ttl if ttl < 0x80000000 else 0, data))
        pos = stop
    error = None
    try:
        for _ in range(nscount + arcount):
            pos = _skip_name(buf, pos, end)
            if pos + 10 > end:
                raise ParseError("record header cut short")
            pos += 10 + (buf[pos + 8] << 8 | buf[pos + 9])
            if pos > end:
                raise ParseError("RDATA overruns the message")
    except ParseError as exc:
        error = f"authority/additional section: {exc}"
    return DnsMessage(ident, flags, bool(flags & 0x8000), flags >> 11 & 0xF, bool(flags & 0x0200),
                      flags & 0xF, tuple(questions), tuple(answers), nscount, arcount, error)


def split_tcp_messages(stream: bytes) -> tuple[list[bytes], int]:
    """Cut DNS-over-TCP bytes into messages (each after a 2-byte length, RFC 1035 4.2.2).

    Returns the complete messages and the number of bytes they took; the
    rest is an incomplete message still arriving. A length prefix too small
    for any DNS message raises :class:`ParseError`, but only when no message
    precedes it in ``stream``: the messages before it are returned first, and
    the next call (starting at the bad prefix) raises.
    """
    out: list[bytes] = []
    pos = 0
    end = len(stream)
    while pos + 2 <= end:
        n = stream[pos] << 8 | stream[pos + 1]
        if n < HEADER:
            if out:
                break
            raise ParseError(f"DNS-over-TCP length {n} is shorter than a DNS header")
        if pos + 2 + n > end:
            break
        out.append(bytes(stream[pos + 2:pos + 2 + n]))
        pos += 2 + n
    return out, pos


# --------------------------------------------------------------------------
# Reading answers
# --------------------------------------------------------------------------

def is_response(msg: DnsMessage) -> bool:
    return msg.qr


def address_text(packed: bytes) -> str:
    """A packed IPv4 or IPv6 address as text (RFC 5952 for IPv6)."""
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def resolved(msg: DnsMessage, hints: bool = False) -> dict[str, list[str]]:
    """Every name in the answer section with the addresses reachable from it.

    Names are lower-cased; CNAME chains are followed case-insensitively; the
    addresses are A and AAAA records (and with ``hints`` the ipv4hint and
    ipv6hint of HTTPS/SVCB records) as text, sorted as strings. This is
    tshark's view (the oracle's ``resolved``): every owner counts, not only
    those reachable from the question. :class:`NameMap` is stricter.
    """
    addrs: dict[str, set[str]] = {}
    cnames: dict[str, set[str]] = {}
    for rr in msg.answers:
        owner = rr.name.lower()
        if rr.rtype == TYPE_CNAME:
            cnames.setdefault(owner, set()).add(str(rr.data).lower())
        elif rr.rtype == TYPE_A or rr.rtype == TYPE_AAAA:
            addrs.setdefault(owner, set()).add(address_text(rr.data))  # type: ignore[arg-type]
        elif hints and isinstance(rr.data, Svcb):
            addrs.setdefault(owner, set()).update(
                address_text(a) for a in rr.data.ipv4hint + rr.data.ipv6hint)
    out: dict[str, list[str]] = {}
    for name in sorted(set(addrs) | set(cnames)):
        seen: set[str] = set()
        todo = [name]
        found: set[str] = set()
        while todo:
            cur = todo.pop()
            if cur not in seen:
                seen.add(cur)
                found |= addrs.get(cur, set())
                todo.extend(cnames.get(cur, ()))
        if found:
            out[name] = sorted(found)
    return out


# --------------------------------------------------------------------------
# The address -> names map
# --------------------------------------------------------------------------

MAX_CHAIN = 16           # CNAME hops followed from the question (resolvers stop near 8-16)


class NameMap:
    """Which names resolved to a server address, per client, bounded and TTL-aware.

    :meth:`learn` takes a response the client received; starting from the
    question's name it follows the answer section's CNAME chain (case
    insensitive, at most 16 hops, loops stopped) and maps the names on the
    chain (the first ``max_names_per_address``, the question's first) to
    every A/AAAA address (and HTTPS/SVCB ipv4hint/ipv6hint address, with the
    record's target name too) owned by a name on the chain. Records
    not reachable from the question are ignored, as a stub resolver ignores
    them: an answer cannot attach a name to an address the client was never
    told about. Only valid host names are kept, lower-cased (the rule of
    :func:`residency_monitor.tls.host_name`, so they compare with an SNI).

    **Lifetime.** A name stays for its TTL (the smallest on its chain), but
    at least ``ttl_floor`` (300 s) and at most ``ttl_cap`` (one day). The
    floor is there because clients keep using an address well past short
    TTLs: browsers keep their own host cache for a minute or more, connection
    pools reuse addresses, and resolvers may serve stale answers (RFC 8767),
    while CDNs answer with TTLs of 20-60 s. Five minutes still ages out an
    address that a CDN has since given to others. The cap bounds how long a
    hostile or careless TTL can pin a name.

    **Clients.** Each name remembers the last ``max_clients_per_name`` (4)
    clients that resolved it, each with its own expiry. :meth:`names_for`
    returns the names this client resolved to the address; when it resolved
    none that are unexpired, it falls back to the names any client resolved.
    The fallback is deliberate: on a gateway whose clients ask a resolver on
    the gateway itself, the capture sees only the gateway's own upstream
    queries, so the connecting client never appears in DNS; and a client
    with an answer cached from before the capture began is better described
    by what others resolved than by nothing. ``fallback=False`` asks for the
    client's own names only.

    **Bounds.** At most ``max_entries`` addresses, each with at most
    ``max_names_per_address`` names (the most recently learned kept). Beyond
    the bound the address learned longest ago is evicted and counted
    (``stats["evicted"]``); fully expired addresses at that end are dropped
    as new answers arrive (``stats["expired"]``). No sequence of answers,
    however hostile, grows the map past its bound.

    Memory (tracemalloc): about 200 bytes per address with one name, plus
    the name's string, which the addresses of one answer share: 200 B per
    address for answers of 20 addresses, 305 B when every address has a name
    of its own (25 characters). The process pays more than tracemalloc sees:
    filled by answers of 20 new addresses and a new name each, with the oldest
    evicted, resident memory grew 525 B per address (benchmarks/bench_attacks.py),
    about 105 MB at the default bound of 200,000 (``flows.dns_max_addresses``).
    """

    __slots__ = ("max_entries", "max_names", "max_clients", "ttl_floor", "ttl_cap", "_map",
                 "_names", "_evicted", "_expired", "_clients")

    def __init__(self, max_entries: int = 200_000, max_names_per_address: int = 8,
                 ttl_floor: float = 300.0, ttl_cap: float = 86_400.0,
                 max_clients_per_name: int = 4):
        if max_entries < 1 or max_names_per_address < 1 or max_clients_per_name < 1:
            raise ValueError("NameMap bounds must be positive")
        self.max_entries = max_entries
        self.max_names = max_names_per_address
        self.max_clients = max_clients_per_name
        self.ttl_floor = ttl_floor
        self.ttl_cap = ttl_cap
        # address -> flat tuple (name, expires, who, name, expires, who, ...), the most
        # recently learned name first. ``who`` is the one client that resolved the name
        # (its expiry is the name's), or a tuple (client, expires, client, expires, ...)
        # most recent first. Flat tuples, not lists of slots: 310 bytes an address
        # instead of 450. The dict is in learning order, oldest first.
        self._map: OrderedDict[bytes, tuple] = OrderedDict()
        self._names = 0
        self._evicted = 0
        self._expired = 0
        # One bytes object per client address (a flow key slice makes a new one each time).
        self._clients: dict[bytes, bytes] = {}

    # -- learning ----------------------------------------------------------------------

    def learn(self, msg: DnsMessage, client: bytes, now: float) -> int:
        """Learn the answers of a response ``client`` received at ``now``; returns
        the number of (address, name) pairs learned."""
        if not msg.qr or msg.opcode != OPCODE_QUERY or not msg.questions or not msg.answers:
            return 0
        qname = msg.questions[0].name.lower()
        cname: dict[str, tuple[str, int]] = {}
        for rr in msg.answers:
            if rr.rtype == TYPE_CNAME and rr.rclass == CLASS_IN:
                cname.setdefault(rr.name.lower(), (str(rr.data).lower(), rr.ttl))
        chain = [qname]
        ttls = [0x7FFFFFFF]           # the smallest CNAME TTL on the way to chain[i]
        cur = qname
        while cur in cname and len(chain) <= MAX_CHAIN:
            cur, ttl = cname[cur]
            if cur in chain:
                break
            chain.append(cur)
            ttls.append(min(ttls[-1], ttl))
        at = {name: i for i, name in enumerate(chain)}
        names = [n for n in map(_host, chain) if n is not None][:self.max_names]
        if not names:
            return 0
        clients = self._clients
        client = clients.setdefault(client, client)
        if len(clients) > 4 * self.max_entries:
            clients.clear()
        learned = 0
        for rr in msg.answers:
            i = at.get(rr.name.lower()) if rr.rclass == CLASS_IN else None
            if i is None:
                continue
            if rr.rtype == TYPE_A or rr.rtype == TYPE_AAAA:
                addrs: tuple[bytes, ...] = (rr.data,)  # type: ignore[assignment]
                these = names
            elif isinstance(rr.data, Svcb) and rr.data.priority:
                addrs = rr.data.ipv4hint + rr.data.ipv6hint
                target = _host(rr.data.target)
                these = names if target is None or target in names else \
                    (names + [target])[:self.max_names]
            else:
                continue
            life = min(max(float(min(ttls[i], rr.ttl)), self.ttl_floor), self.ttl_cap)
            for addr in addrs:
                self._add(addr, these, client, now + life, now)
                learned += len(these)
        self._sweep(now)
        return learned

    def _add(self, addr: bytes, names: list[str], client: bytes, expires: float,
             now: float) -> None:
        m = self._map
        flat = m.get(addr)
        old: dict[str, tuple[float, bytes | tuple]] = {}
        if flat is None:
            if len(m) >= self.max_entries:
                _, gone = m.popitem(last=False)
                self._names -= len(gone) // 3
                self._evicted += 1
        else:
            m.move_to_end(addr)
            self._names -= len(flat) // 3
            old = {flat[i]: (flat[i + 1], flat[i + 2])
                   for i in range(0, len(flat), 3) if flat[i + 1] > now}
        new: list = []
        room = 3 * self.max_names
        for name in names:
            prev = old.pop(name, None)
            if prev is None:
                new += (name, expires, client)
            else:
                slot_expires = max(expires, prev[0])
                who = prev[1]
                pairs: tuple = (who, prev[0]) if isinstance(who, bytes) else who
                for j in range(0, len(pairs), 2):
                    if pairs[j] == client:
                        pairs = pairs[:j] + pairs[j + 2:]
                        break
                pairs = ((client, expires) + pairs)[:2 * self.max_clients]
                if len(pairs) == 2 and expires == slot_expires:
                    new += (name, slot_expires, client)
                else:
                    new += (name, slot_expires, pairs)
            if len(new) >= room:
                break
        for name, (slot_expires, who) in old.items():
            if len(new) >= room:
                break
            new += (name, slot_expires, who)
        m[addr] = tuple(new)
        self._names += len(new) // 3

    def _sweep(self, now: float) -> None:
        """Drop up to two fully expired addresses at the oldest end (amortised cleanup)."""
        m = self._map
        for _ in range(2):
            if not m:
                return
            addr = next(iter(m))
            flat = m[addr]
            if any(flat[i] > now for i in range(1, len(flat), 3)):
                return
            del m[addr]
            self._names -= len(flat) // 3
            self._expired += 1

    # -- asking ------------------------------------------------------------------------

    def names_for(self, client: bytes, server: bytes, now: float,
                  fallback: bool = True) -> tuple[str, ...]:
        """The unexpired names ``client`` resolved to ``server`` (packed), most recent
        first; if there are none and ``fallback``, those any client resolved."""
        flat = self._map.get(server)
        if not flat:
            return ()
        mine = []
        live = []
        for i in range(0, len(flat), 3):
            if flat[i + 1] > now:
                name = flat[i]
                live.append(name)
                who = flat[i + 2]
                if type(who) is bytes:
                    if who == client:
                        mine.append(name)
                    continue
                for j in range(0, len(who), 2):
                    if who[j] == client:
                        if who[j + 1] > now:
                            mine.append(name)
                        break
        if mine or not fallback:
            return tuple(mine)
        return tuple(live)

    @property
    def stats(self) -> dict[str, int]:
        """``entries`` (addresses), ``names`` (address-name pairs), ``evicted`` and
        ``expired`` (addresses dropped so far)."""
        return {"entries": len(self._map), "names": self._names, "evicted": self._evicted,
                "expired": self._expired}

    def __len__(self) -> int:
        return len(self._map)


def _host(name: str) -> str | None:
    """A lower-cased name if it is a valid host name, else None.

    The rule of :func:`residency_monitor.tls.host_name` (so a name compares
    with an SNI), as a regular expression: five times faster, and half of a
    :meth:`NameMap.learn` was spent there. A test holds the two equal.
    """
    if len(name) <= 253 and _HOST_NAME(name):
        return name.lower()
    return None


_HOST_NAME = re.compile(r"[0-9A-Za-z_-]{1,63}(?:\.[0-9A-Za-z_-]{1,63})*").fullmatch


# --------------------------------------------------------------------------
# Public DNS-over-HTTPS / DNS-over-TLS resolvers
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DohProvider:
    """A public encrypted-DNS service: its endpoint names and anycast addresses.

    ``hosts`` match exactly; ``suffixes`` match any name below them (the
    per-user or per-profile endpoints such as ``<id>.dns.nextdns.io``).
    """

    name: str
    hosts: tuple[str, ...]
    suffixes: tuple[str, ...]
    addresses: tuple[str, ...]


KNOWN_DOH: tuple[DohProvider, ...] = (
    DohProvider("Google Public DNS",
                ("dns.google", "dns.google.com", "8888.google", "dns64.dns.google"), (),
                ("8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844",
                 "2001:4860:4860::6464", "2001:4860:4860::64")),
    DohProvider("Cloudflare",
                ("cloudflare-dns.com", "one.one.one.one", "1dot1dot1dot1.cloudflare-dns.com"),
                ("cloudflare-dns.com", "cloudflare-gateway.com"),
                ("1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3",
                 "2606:4700:4700::1111", "2606:4700:4700::1001", "2606:4700:4700::1112",
                 "2606:4700:4700::1002", "2606:4700:4700::1113", "2606:4700:4700::1003",
                 "2606:4700:4700::64", "2606:4700:4700::6400")),
    DohProvider("Quad9",
                ("dns.quad9.net", "dns9.quad9.net", "dns10.quad9.net", "dns11.quad9.net"), (),
                ("9.9.9.9", "149.112.112.112", "9.9.9.10", "149.112.112.10", "9.9.9.11",
                 "149.112.112.11", "2620:fe::fe", "2620:fe::9", "2620:fe::10", "2620:fe::fe:10",
                 "2620:fe::11", "2620:fe::fe:11")),
    DohProvider("OpenDNS",
                ("doh.opendns.com", "doh.familyshield.opendns.com", "doh.umbrella.com",
                 "dns.opendns.com", "dns.umbrella.com"), (),
                ("208.67.222.222", "208.67.220.220", "208.67.222.123", "208.67.220.123",
                 "2620:119:35::35", "2620:119:53::53", "2620:119:35::123",
                 "2620:119:53::123")),
    DohProvider("NextDNS", ("dns.nextdns.io",), ("dns.nextdns.io",),
                ("45.90.28.0", "45.90.30.0", "2a07:a8c0::", "2a07:a8c1::")),
    DohProvider("CleanBrowsing",
                ("doh.cleanbrowsing.org",), ("doh.cleanbrowsing.org",),
                ("185.228.168.168", "185.228.169.168", "185.228.168.9", "185.228.169.9",
                 "185.228.168.10", "185.228.169.11", "2a0d:2a00:1::", "2a0d:2a00:2::",
                 "2a0d:2a00:1::1", "2a0d:2a00:2::1", "2a0d:2a00:1::2", "2a0d:2a00:2::2")),
    DohProvider("AdGuard DNS",
                ("dns.adguard-dns.com", "unfiltered.adguard-dns.com", "family.adguard-dns.com",
                 "dns.adguard.com"), ("d.adguard-dns.com",),
                ("94.140.14.14", "94.140.15.15", "94.140.14.140", "94.140.14.141",
                 "94.140.14.15", "94.140.15.16", "2a10:50c0::ad1:ff", "2a10:50c0::ad2:ff",
                 "2a10:50c0::1:ff", "2a10:50c0::2:ff", "2a10:50c0::bad1:ff",
                 "2a10:50c0::bad2:ff")),
    DohProvider("Mullvad DNS", ("dns.mullvad.net",), ("dns.mullvad.net",),
                ("194.242.2.2", "194.242.2.3", "194.242.2.4", "194.242.2.5", "194.242.2.6",
                 "194.242.2.9", "2a07:e340::2", "2a07:e340::3", "2a07:e340::4")),
    DohProvider("Control D", ("freedns.controld.com", "dns.controld.com"),
                ("freedns.controld.com", "dns.controld.com"),
                ("76.76.2.0", "76.76.10.0", "2606:1a40::", "2606:1a40:1::")),
    # Mainland-China public resolvers, often configured in Macau and the Greater Bay Area.
    DohProvider("AliDNS", ("dns.alidns.com",), (),
                ("223.5.5.5", "223.6.6.6", "2400:3200::1", "2400:3200:baba::1")),
    DohProvider("DNSPod", ("doh.pub", "dot.pub", "sm2.doh.pub"), (),
                ("1.12.12.12", "120.53.53.53")),
)


def _doh_indexes() -> tuple[dict[str, str], tuple[tuple[str, str], ...], dict[bytes, str]]:
    hosts: dict[str, str] = {}
    suffixes: list[tuple[str, str]] = []
    addrs: dict[bytes, str] = {}
    for p in KNOWN_DOH:
        for h in p.hosts:
            hosts[h] = p.name
        suffixes.extend(("." + s, p.name) for s in p.suffixes)
        for a in p.addresses:
            addrs[ipaddress.ip_address(a).packed] = p.name
    return hosts, tuple(suffixes), addrs


_DOH_HOSTS, _DOH_SUFFIXES, _DOH_ADDRS = _doh_indexes()


def doh_provider(sni: str | None, server_ip: str | bytes) -> str | None:
    """The public encrypted-DNS provider a flow talks to, or None.

    The server name decides when it is known (exactly, or below a per-user
    suffix); otherwise the address (text or packed) does, which covers DoT by
    address and a missing or ECH-hidden SNI. Meant for flows on port 443
    (DoH, and DoH3 over QUIC) and 853 (DoT, DoQ): the same addresses also
    answer plain DNS on 53 and, for some, host web sites.
    """
    if sni:
        name = sni.rstrip(".").lower()
        hit = _DOH_HOSTS.get(name)
        if hit is not None:
            return hit
        for suffix, provider in _DOH_SUFFIXES:
            if name.endswith(suffix):
                return provider
    if isinstance(server_ip, bytes):
        return _DOH_ADDRS.get(server_ip)
    try:
        packed = ipaddress.ip_address(server_ip.split("%", 1)[0]).packed
    except ValueError:
        return None
    return _DOH_ADDRS.get(packed)
