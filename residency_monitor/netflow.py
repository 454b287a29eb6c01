"""Flow export decoders: NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011).

Routers and probes that cannot host a capture export what they saw as flow
records over UDP. This module turns those datagrams into
:class:`ExportedFlow` facts; it never touches a socket and never reads the
clock (the caller passes the arrival time), like every other parser here.

v9 and IPFIX records are described by templates that the exporter sends
from time to time, so decoding is stateful: :class:`FlowDecoder` keeps the
templates of each (exporter address, source id / observation domain,
template id), the sampling each exporter announced in options records, and
briefly holds data that arrived before its template (UDP reorders, and an
exporter that just restarted sends data before its next template refresh).

Contract: the pure readers below raise only :class:`~.wire.ParseError`;
:meth:`FlowDecoder.feed` raises nothing: a malformed datagram or set is
counted and the records decoded before it are kept.

Numbers are IANA's IPFIX information elements; NetFlow v9's field types 1-127
are the same numbers (IPFIX took them over), so one table serves both.
"""

from __future__ import annotations

import socket
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from .wire import ParseError

# -- information elements (IANA "IPFIX Information Elements"; v9 field types alike) ---------
OCTET_DELTA, PACKET_DELTA = 1, 2
PROTOCOL, TCP_FLAGS = 4, 6
SRC_PORT, SRC_V4, INGRESS_IF, DST_PORT, DST_V4, EGRESS_IF = 7, 8, 10, 11, 12, 14
END_SYSUPTIME, START_SYSUPTIME = 21, 22
POST_OCTET_DELTA, POST_PACKET_DELTA = 23, 24
SRC_V6, DST_V6 = 27, 28
ICMP_TYPE_CODE_V4, ICMP_TYPE_CODE_V6 = 32, 139
SAMPLING_INTERVAL, SAMPLING_ALGORITHM = 34, 35
SAMPLER_ID, SAMPLER_MODE, SAMPLER_RANDOM_INTERVAL = 48, 49, 50
IP_VERSION, FLOW_DIRECTION = 60, 61
OCTET_TOTAL, PACKET_TOTAL = 85, 86
FLOW_END_REASON = 136
START_SECONDS, END_SECONDS = 150, 151
START_MILLIS, END_MILLIS = 152, 153
START_MICROS, END_MICROS = 154, 155
START_NANOS, END_NANOS = 156, 157
SYSTEM_INIT_MILLIS = 160
BIFLOW_DIRECTION = 239
SELECTOR_ID = 302
SAMPLING_PACKET_INTERVAL, SAMPLING_PACKET_SPACE = 305, 306
SAMPLING_SIZE, SAMPLING_POPULATION = 309, 310

#: RFC 5103: reverse-direction elements carry this private enterprise number
REVERSE_PEN = 29305
REVERSE = 1 << 16          # key offset of a reverse element in a record's values
V9_SCOPE = 1 << 17         # key offset of a v9 options scope field (its own numbering)

ADDRESS_FIELDS = frozenset((SRC_V4, DST_V4, SRC_V6, DST_V6))
#: fields a flow or an options record is read for; every other field is skipped unread
WANTED = frozenset((
    OCTET_DELTA, PACKET_DELTA, PROTOCOL, TCP_FLAGS, SRC_PORT, SRC_V4, INGRESS_IF, DST_PORT,
    DST_V4, EGRESS_IF, END_SYSUPTIME, START_SYSUPTIME, POST_OCTET_DELTA, POST_PACKET_DELTA,
    SRC_V6, DST_V6, ICMP_TYPE_CODE_V4, ICMP_TYPE_CODE_V6, SAMPLING_INTERVAL,
    SAMPLING_ALGORITHM, SAMPLER_ID, SAMPLER_MODE, SAMPLER_RANDOM_INTERVAL, FLOW_DIRECTION,
    OCTET_TOTAL, PACKET_TOTAL, FLOW_END_REASON, START_SECONDS, END_SECONDS, START_MILLIS,
    END_MILLIS, START_MICROS, END_MICROS, START_NANOS, END_NANOS, SYSTEM_INIT_MILLIS,
    BIFLOW_DIRECTION, SELECTOR_ID, SAMPLING_PACKET_INTERVAL, SAMPLING_PACKET_SPACE,
    SAMPLING_SIZE, SAMPLING_POPULATION))
_REVERSE_WANTED = frozenset((OCTET_DELTA, PACKET_DELTA, TCP_FLAGS, OCTET_TOTAL, PACKET_TOTAL))
_SAMPLING_FIELDS = frozenset((SAMPLING_INTERVAL, SAMPLER_RANDOM_INTERVAL,
                              SAMPLING_PACKET_INTERVAL, SAMPLING_SIZE))
_NTP_EPOCH = 2208988800     # seconds from 1900 (NTP) to 1970 (Unix)
VARIABLE = 65535            # IPFIX: a variable-length field

NETFLOW_V5, NETFLOW_V9, IPFIX = "netflow_v5", "netflow_v9", "ipfix"
PROTOCOLS = (NETFLOW_V5, NETFLOW_V9, IPFIX, "unknown")

# Bounds: what a hostile or broken exporter can make the decoder hold.
MAX_TEMPLATES = 4096           # templates across all exporters; the least recently used go
MAX_FIELDS = 512               # fields in one template
MAX_HELD_SETS = 256            # data sets waiting for their template, across all exporters
MAX_HELD_BYTES = 4 << 20
HOLD_SECONDS = 10.0            # how long such a set waits
MAX_EXPORTERS = 4096           # exporters whose sampling and uptime are remembered
MAX_SAMPLERS = 256             # sampler ids remembered per exporter


@dataclass(frozen=True, slots=True)
class ExportedFlow:
    """One data record as the exporter saw it: usually one direction of a connection.

    Addresses are packed (4 or 16 bytes). Counts are already multiplied by
    ``sampling`` (1 when the exporter did not sample). A biflow record
    (RFC 5103, reverse elements) carries the reverse direction's counts in
    ``rev_*``; otherwise those are 0.
    """

    protocol: str             # netflow_v5 | netflow_v9 | ipfix
    exporter: str
    domain: int               # v9 source id / IPFIX observation domain id (v5: engine type, id)
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    packets: int
    octets: int
    tcp_flags: int
    start: float              # first packet, seconds since the epoch
    end: float                # last packet
    sampling: int = 1
    direction: int | None = None          # flowDirection: 0 ingress, 1 egress
    ingress_if: int | None = None
    egress_if: int | None = None
    end_reason: int | None = None         # flowEndReason: 1 idle, 2 active, 3 end, 4 forced
    icmp_type_code: int | None = None     # type << 8 | code
    biflow: bool = False
    biflow_direction: int | None = None   # 1: the source is the initiator, 2: the reverse
    rev_packets: int = 0
    rev_octets: int = 0
    rev_tcp_flags: int = 0
    timing: str = "exact"                 # "export_time" when times could only be estimated


@dataclass(frozen=True, slots=True)
class Field:
    ie: int
    length: int               # VARIABLE for an IPFIX variable-length field
    enterprise: int = 0


@dataclass(frozen=True, slots=True)
class Template:
    """A data or options template, compiled for decoding."""

    template_id: int
    fields: tuple[Field, ...]
    scope_count: int = 0      # options templates: the first scope_count fields are the scope
    options: bool = False
    record_length: int | None = None      # None: variable length (walk each record)
    # (key, offset, length) of the fields worth reading, for fixed-length records
    reads: tuple[tuple[int, int, int], ...] = ()
    min_length: int = 0


def _key(f: Field, index: int, scope_count: int, v9: bool) -> int | None:
    """A field's key in a record's values, or None when it is not worth reading."""
    if v9 and index < scope_count:
        return V9_SCOPE | f.ie
    if f.enterprise == 0:
        return f.ie if f.ie in WANTED else None
    if f.enterprise == REVERSE_PEN and f.ie in _REVERSE_WANTED:
        return REVERSE | f.ie
    return None


def compile_template(template_id: int, fields: list[Field], scope_count: int = 0,
                     options: bool = False, v9: bool = False) -> Template:
    """Check a template and precompute where its fields lie; ParseError if it cannot work."""
    if template_id < 256:
        raise ParseError(f"template id {template_id} is below 256")
    if not fields:
        raise ParseError(f"template {template_id} has no fields")
    if len(fields) > MAX_FIELDS:
        raise ParseError(f"template {template_id} has {len(fields)} fields")
    reads: list[tuple[int, int, int]] = []
    offset: int | None = 0
    minimum = 0
    for i, f in enumerate(fields):
        key = _key(f, i, scope_count, v9)
        if key is not None and (key & 0xFFFF) in ADDRESS_FIELDS and key < REVERSE \
                and f.length not in (4 if f.ie in (SRC_V4, DST_V4) else 16, VARIABLE):
            raise ParseError(f"template {template_id}: address field {f.ie} of {f.length} bytes")
        if f.length == VARIABLE:
            offset = None
            minimum += 1
            continue
        minimum += f.length
        if offset is not None:
            if key is not None:
                reads.append((key, offset, f.length))
            offset += f.length
    if minimum == 0:
        raise ParseError(f"template {template_id} describes empty records")
    return Template(template_id, tuple(fields), scope_count, options, offset,
                    tuple(reads), minimum)


# -- pure readers -------------------------------------------------------------------------

def _u16(b: bytes, p: int) -> int:
    return b[p] << 8 | b[p + 1]


def _u32(b: bytes, p: int) -> int:
    return int.from_bytes(b[p:p + 4], "big")


def parse_ipfix_templates(body: bytes, options: bool) -> list[tuple[int, list[Field], int]]:
    """An IPFIX (options) template set's records: (template id, fields, scope field count).

    A record with no fields is a withdrawal (RFC 7011 8.1): its field list is empty.
    """
    out = []
    p, end = 0, len(body)
    while end - p >= 4:
        tid, count = _u16(body, p), _u16(body, p + 2)
        p += 4
        scope = 0
        if count and options:
            if end - p < 2:
                raise ParseError("options template cut before its scope field count")
            scope = _u16(body, p)
            p += 2
            if scope == 0 or scope > count:
                raise ParseError(f"options template {tid}: scope field count {scope} of {count}")
        fields = []
        for _ in range(count):
            if end - p < 4:
                raise ParseError(f"template {tid} cut inside its field list")
            ie, length = _u16(body, p), _u16(body, p + 2)
            p += 4
            enterprise = 0
            if ie & 0x8000:
                if end - p < 4:
                    raise ParseError(f"template {tid} cut inside an enterprise number")
                enterprise = _u32(body, p)
                p += 4
                ie &= 0x7FFF
            fields.append(Field(ie, length, enterprise))
        out.append((tid, fields, scope))
    return out   # fewer than 4 bytes left: padding


def parse_v9_templates(body: bytes) -> list[tuple[int, list[Field]]]:
    """A NetFlow v9 template FlowSet (id 0): (template id, fields) per template."""
    out = []
    p, end = 0, len(body)
    while end - p >= 4:
        tid, count = _u16(body, p), _u16(body, p + 2)
        p += 4
        if end - p < 4 * count:
            raise ParseError(f"template {tid} cut inside its field list")
        fields = [Field(_u16(body, p + 4 * i), _u16(body, p + 4 * i + 2)) for i in range(count)]
        p += 4 * count
        out.append((tid, fields))
    return out


def parse_v9_options_template(body: bytes) -> list[tuple[int, list[Field], int]]:
    """A v9 options template FlowSet (id 1): scope and option lengths are in bytes."""
    out = []
    p, end = 0, len(body)
    while end - p >= 6:
        tid, scope_len, option_len = _u16(body, p), _u16(body, p + 2), _u16(body, p + 4)
        p += 6
        if scope_len % 4 or option_len % 4:
            raise ParseError(f"options template {tid}: lengths {scope_len}/{option_len} "
                             "are not multiples of 4")
        if end - p < scope_len + option_len:
            raise ParseError(f"options template {tid} cut inside its field list")
        fields = [Field(_u16(body, p + i), _u16(body, p + i + 2))
                  for i in range(0, scope_len + option_len, 4)]
        p += scope_len + option_len
        if not fields:
            raise ParseError(f"options template {tid} has no fields")
        out.append((tid, fields, scope_len // 4))
        if end - p < 6:
            break   # the rest is padding
    return out


def read_records(body: bytes, t: Template) -> list[dict[int, int | bytes]]:
    """Every data record of a set, as {key: value} of the fields worth reading.

    Integers of any (reduced-size) length are read big-endian; addresses
    stay bytes. Trailing bytes shorter than a record are padding.
    """
    out: list[dict[int, int | bytes]] = []
    end = len(body)
    n = t.record_length
    if n is not None:
        reads = t.reads
        for base in range(0, end - n + 1, n):
            values: dict[int, int | bytes] = {}
            for key, off, length in reads:
                p = base + off
                if (key & 0xFFFF) in ADDRESS_FIELDS and key < REVERSE:
                    values[key] = body[p:p + length]
                else:
                    values[key] = int.from_bytes(body[p:p + length], "big")
            out.append(values)
        return out
    p = 0
    while end - p >= t.min_length:
        values = {}
        for i, f in enumerate(t.fields):
            length = f.length
            if length == VARIABLE:
                if p >= end:
                    raise ParseError("variable-length field cut before its length")
                length = body[p]
                p += 1
                if length == 255:
                    if end - p < 2:
                        raise ParseError("variable-length field cut inside its length")
                    length = _u16(body, p)
                    p += 2
            if end - p < length:
                raise ParseError(f"field {f.ie} of {length} bytes overruns its set")
            wanted = _key(f, i, t.scope_count, False)   # variable length: IPFIX only
            if wanted is not None:
                if (wanted & 0xFFFF) in ADDRESS_FIELDS and wanted < REVERSE:
                    if length in (4, 16):
                        values[wanted] = body[p:p + length]
                else:
                    values[wanted] = int.from_bytes(body[p:p + length], "big")
            p += length
        out.append(values)
    return out


# -- the stateful decoder -----------------------------------------------------------------

@dataclass(slots=True)
class _Exporter:
    """What one (exporter, domain) announced outside its templates."""

    sampling: int = 1                    # rate from an options record without a sampler id
    samplers: dict[int, int] | None = None
    init_ms: int | None = None           # systemInitTimeMilliseconds (IPFIX sysUpTime fields)
    v5_sampling: int = 1


@dataclass(slots=True)
class _Context:
    """Header facts a data set is decoded with."""

    protocol: str
    exporter: str
    domain: int
    export_time: float
    uptime_ms: int | None      # v9: the header's sysUpTime


@dataclass(slots=True)
class _Held:
    ctx: _Context
    key: tuple[str, int, int]
    body: bytes
    until: float


class FlowDecoder:
    """Decodes export datagrams from any number of exporters; counts what it cannot use.

    ``stats`` counts, per protocol: ``datagrams``, ``records`` (flow data
    records decoded), ``options_records``, ``templates``, ``malformed``
    (datagrams or sets that could not be decoded; their remaining records are
    lost), ``no_template`` (data sets dropped because no template came in
    time), ``sampled`` (records whose counts a sampling rate multiplied).
    """

    def __init__(self, hold_seconds: float = HOLD_SECONDS, max_templates: int = MAX_TEMPLATES,
                 max_held_sets: int = MAX_HELD_SETS):
        self.hold_seconds = hold_seconds
        self.max_templates = max_templates
        self.max_held_sets = max_held_sets
        self.templates: OrderedDict[tuple[str, int, int], Template] = OrderedDict()
        self.exporters: OrderedDict[tuple[str, int], _Exporter] = OrderedDict()
        self.held: deque[_Held] = deque()
        self.held_bytes = 0
        self.stats: Counter[tuple[str, str]] = Counter()
        self.last_error: str | None = None

    # -- entry points

    def feed(self, data: bytes, exporter: str, now: float) -> list[ExportedFlow]:
        """One datagram from ``exporter`` (its address) arriving at ``now``. Never raises."""
        out: list[ExportedFlow] = []
        version = data[0] << 8 | data[1] if len(data) >= 2 else 0
        protocol = {5: NETFLOW_V5, 9: NETFLOW_V9, 10: IPFIX}.get(version, "unknown")
        self.stats[protocol, "datagrams"] += 1
        try:
            if version == 5:
                self._v5(data, exporter, out)
            elif version == 9:
                self._v9(data, exporter, now, out)
            elif version == 10:
                self._ipfix(data, exporter, now, out)
            else:
                raise ParseError(f"not NetFlow v5/v9 or IPFIX (version {version})")
        except ParseError as exc:
            self.stats[protocol, "malformed"] += 1
            self.last_error = f"{exporter}: {protocol}: {exc}"
        self.expire(now)
        return out

    def expire(self, now: float) -> None:
        """Give up held data sets whose template did not come in time."""
        held = self.held
        while held and (held[0].until <= now or len(held) > self.max_held_sets
                        or self.held_bytes > MAX_HELD_BYTES):
            h = held.popleft()
            self.held_bytes -= len(h.body)
            self.stats[h.ctx.protocol, "no_template"] += 1

    @property
    def template_count(self) -> int:
        return len(self.templates)

    # -- NetFlow v5: fixed records, no templates

    def _v5(self, data: bytes, exporter: str, out: list[ExportedFlow]) -> None:
        if len(data) < 24:
            raise ParseError("NetFlow v5 header cut short")
        count = _u16(data, 2)
        if count == 0 or count > 30:
            raise ParseError(f"NetFlow v5 record count {count} (1-30)")
        if len(data) < 24 + 48 * count:
            raise ParseError(f"NetFlow v5 datagram of {len(data)} bytes holds fewer than "
                             f"{count} records")
        uptime, secs, nsecs = _u32(data, 4), _u32(data, 8), _u32(data, 12)
        engine = data[20] << 8 | data[21]
        interval = _u16(data, 22) & 0x3FFF
        rate = interval if interval > 1 else 1
        export = secs + min(nsecs, 999_999_999) / 1e9
        for i in range(count):
            p = 24 + 48 * i
            first, last = _u32(data, p + 24), _u32(data, p + 28)
            out.append(ExportedFlow(
                protocol=NETFLOW_V5, exporter=exporter, domain=engine, proto=data[p + 38],
                src=data[p:p + 4], dst=data[p + 4:p + 8], sport=_u16(data, p + 32),
                dport=_u16(data, p + 34), packets=_u32(data, p + 16) * rate,
                octets=_u32(data, p + 20) * rate, tcp_flags=data[p + 37],
                start=_uptime_time(export, uptime, first),
                end=_uptime_time(export, uptime, last), sampling=rate,
                ingress_if=_u16(data, p + 12), egress_if=_u16(data, p + 14)))
        self.stats[NETFLOW_V5, "records"] += count
        if rate > 1:
            self.stats[NETFLOW_V5, "sampled"] += count

    # -- NetFlow v9

    def _v9(self, data: bytes, exporter: str, now: float, out: list[ExportedFlow]) -> None:
        if len(data) < 20:
            raise ParseError("NetFlow v9 header cut short")
        ctx = _Context(NETFLOW_V9, exporter, _u32(data, 16), float(_u32(data, 8)),
                       _u32(data, 4))
        p, end = 20, len(data)
        while end - p >= 4:
            set_id, length = _u16(data, p), _u16(data, p + 2)
            if length < 4 or p + length > end:
                raise ParseError(f"FlowSet {set_id} of length {length} at offset {p} "
                                 f"overruns the datagram of {end} bytes")
            body = data[p + 4:p + length]
            p += length
            if set_id == 0:
                for tid, fields in parse_v9_templates(body):
                    self._template(ctx, compile_template(tid, fields, v9=True), now, out)
            elif set_id == 1:
                for tid, fields, scope in parse_v9_options_template(body):
                    self._template(ctx, compile_template(tid, fields, scope, True, v9=True),
                                   now, out)
            elif set_id >= 256:
                self._data(ctx, set_id, body, now, out)
            # ids 2-255 are reserved: skipped

    # -- IPFIX

    def _ipfix(self, data: bytes, exporter: str, now: float, out: list[ExportedFlow]) -> None:
        if len(data) < 16:
            raise ParseError("IPFIX message header cut short")
        length = _u16(data, 2)
        if length < 16 or length > len(data):
            raise ParseError(f"IPFIX message length {length} but the datagram has "
                             f"{len(data)} bytes")
        ctx = _Context(IPFIX, exporter, _u32(data, 12), float(_u32(data, 4)), None)
        p = 16
        while length - p >= 4:
            set_id, set_len = _u16(data, p), _u16(data, p + 2)
            if set_len < 4 or p + set_len > length:
                raise ParseError(f"set {set_id} of length {set_len} at offset {p} overruns "
                                 f"the message of {length} bytes")
            body = data[p + 4:p + set_len]
            p += set_len
            if set_id in (2, 3):
                for tid, fields, scope in parse_ipfix_templates(body, set_id == 3):
                    if not fields:
                        self._withdraw(ctx, tid, set_id)
                    else:
                        self._template(ctx, compile_template(tid, fields, scope, set_id == 3),
                                       now, out)
            elif set_id >= 256:
                self._data(ctx, set_id, body, now, out)
            # ids 0, 1 and 4-255 are not IPFIX data or templates: skipped
        if length - p:
            raise ParseError(f"{length - p} stray bytes after the last set")

    # -- templates

    def _template(self, ctx: _Context, t: Template, now: float, out: list[ExportedFlow]) -> None:
        key = (ctx.exporter, ctx.domain, t.template_id)
        self.templates[key] = t
        self.templates.move_to_end(key)
        while len(self.templates) > self.max_templates:
            self.templates.popitem(last=False)
        self.stats[ctx.protocol, "templates"] += 1
        if self.held and any(h.key == key for h in self.held):
            waiting = [h for h in self.held if h.key == key]
            self.held = deque(h for h in self.held if h.key != key)
            for h in waiting:
                self.held_bytes -= len(h.body)
                self._decode_set(h.ctx, t, h.body, out)

    def _withdraw(self, ctx: _Context, tid: int, set_id: int) -> None:
        """RFC 7011 8.1: a template id withdraws one; the set id withdraws all of its kind."""
        if tid == set_id:
            options = set_id == 3
            for key in [k for k, t in self.templates.items()
                        if k[:2] == (ctx.exporter, ctx.domain) and t.options == options]:
                del self.templates[key]
        else:
            self.templates.pop((ctx.exporter, ctx.domain, tid), None)

    # -- data

    def _data(self, ctx: _Context, tid: int, body: bytes, now: float,
              out: list[ExportedFlow]) -> None:
        key = (ctx.exporter, ctx.domain, tid)
        t = self.templates.get(key)
        if t is None:
            if self.hold_seconds > 0:
                self.held.append(_Held(ctx, key, bytes(body), now + self.hold_seconds))
                self.held_bytes += len(body)
            else:
                self.stats[ctx.protocol, "no_template"] += 1
            return
        self._decode_set(ctx, t, body, out)

    def _exporter(self, ctx: _Context) -> _Exporter:
        key = (ctx.exporter, ctx.domain)
        e = self.exporters.get(key)
        if e is None:
            e = self.exporters[key] = _Exporter()
            while len(self.exporters) > MAX_EXPORTERS:
                self.exporters.popitem(last=False)
        return e

    def _decode_set(self, ctx: _Context, t: Template, body: bytes,
                    out: list[ExportedFlow]) -> None:
        records = read_records(body, t)
        if t.options:
            for values in records:
                self._options(ctx, values)
            self.stats[ctx.protocol, "options_records"] += len(records)
            return
        exp = self.exporters.get((ctx.exporter, ctx.domain))
        n = sampled = 0
        for values in records:
            flow = self._flow(ctx, values, exp)
            if flow is not None:
                out.append(flow)
                n += 1
                sampled += flow.sampling > 1
        self.stats[ctx.protocol, "records"] += n
        if sampled:
            self.stats[ctx.protocol, "sampled"] += sampled

    def _options(self, ctx: _Context, values: dict[int, int | bytes]) -> None:
        """Sampling and uptime an exporter announces in options data records."""
        rate = _sampling_rate(values)
        init = values.get(SYSTEM_INIT_MILLIS)
        if rate is None and init is None:
            return
        e = self._exporter(ctx)
        if isinstance(init, int):
            e.init_ms = init
        if rate is not None:
            sampler = values.get(SAMPLER_ID, values.get(SELECTOR_ID,
                                                        values.get(V9_SCOPE | SAMPLER_ID)))
            if isinstance(sampler, int):
                if e.samplers is None:
                    e.samplers = {}
                if sampler in e.samplers or len(e.samplers) < MAX_SAMPLERS:
                    e.samplers[sampler] = rate
            else:
                e.sampling = rate

    def _flow(self, ctx: _Context, v: dict[int, int | bytes],
              exp: _Exporter | None) -> ExportedFlow | None:
        src, dst = v.get(SRC_V4) or v.get(SRC_V6), v.get(DST_V4) or v.get(DST_V6)
        if not isinstance(src, bytes) or not isinstance(dst, bytes) or len(src) != len(dst):
            return None    # not an IP flow (e.g. a MAC-only or MPLS template): not ours
        rate = _sampling_rate(v)
        if rate is None and exp is not None:
            sampler = v.get(SAMPLER_ID, v.get(SELECTOR_ID))
            if isinstance(sampler, int) and exp.samplers and sampler in exp.samplers:
                rate = exp.samplers[sampler]
            else:
                rate = exp.sampling
        rate = rate or 1
        packets = _int(v, PACKET_DELTA, PACKET_TOTAL, POST_PACKET_DELTA)
        octets = _int(v, OCTET_DELTA, OCTET_TOTAL, POST_OCTET_DELTA)
        start, end, timing = self._times(ctx, v, exp)
        icmp = v.get(ICMP_TYPE_CODE_V4, v.get(ICMP_TYPE_CODE_V6))
        rev_packets = _int(v, REVERSE | PACKET_DELTA, REVERSE | PACKET_TOTAL)
        rev_octets = _int(v, REVERSE | OCTET_DELTA, REVERSE | OCTET_TOTAL)
        biflow = any(k & REVERSE and not k & V9_SCOPE for k in v)
        return ExportedFlow(
            protocol=ctx.protocol, exporter=ctx.exporter, domain=ctx.domain,
            proto=_int(v, PROTOCOL), src=src, dst=dst, sport=_int(v, SRC_PORT),
            dport=_int(v, DST_PORT), packets=packets * rate, octets=octets * rate,
            tcp_flags=_int(v, TCP_FLAGS) & 0xFF, start=start, end=end, sampling=rate,
            direction=_opt(v, FLOW_DIRECTION), ingress_if=_opt(v, INGRESS_IF),
            egress_if=_opt(v, EGRESS_IF), end_reason=_opt(v, FLOW_END_REASON),
            icmp_type_code=icmp if isinstance(icmp, int) else None, biflow=biflow,
            biflow_direction=_opt(v, BIFLOW_DIRECTION), rev_packets=rev_packets * rate,
            rev_octets=rev_octets * rate, rev_tcp_flags=_int(v, REVERSE | TCP_FLAGS) & 0xFF,
            timing=timing)

    def _times(self, ctx: _Context, v: dict[int, int | bytes],
               exp: _Exporter | None) -> tuple[float, float, str]:
        """First and last packet time from whichever timestamps the record carries."""
        for lo, hi, scale in ((START_MILLIS, END_MILLIS, 1e-3), (START_SECONDS, END_SECONDS, 1.0)):
            pair = _pair(v, lo, hi)
            if pair is not None:
                return pair[0] * scale, pair[1] * scale, "exact"
        for lo, hi in ((START_MICROS, END_MICROS), (START_NANOS, END_NANOS)):
            pair = _pair(v, lo, hi)
            if pair is not None:
                return _ntp(pair[0]), _ntp(pair[1]), "exact"
        pair = _pair(v, START_SYSUPTIME, END_SYSUPTIME)
        if pair is not None:
            first, last = pair
            if ctx.uptime_ms is not None:      # v9: relative to the header's sysUpTime
                return (_uptime_time(ctx.export_time, ctx.uptime_ms, first),
                        _uptime_time(ctx.export_time, ctx.uptime_ms, last), "exact")
            init = v.get(SYSTEM_INIT_MILLIS)
            if not isinstance(init, int) and exp is not None:
                init = exp.init_ms
            if isinstance(init, int):
                return (init + first) / 1e3, (init + last) / 1e3, "exact"
            # No boot time: place the flow's end at the export (a flow is exported when it
            # ends) and keep its duration.
            return (ctx.export_time - max(0, last - first) / 1e3, ctx.export_time,
                    "export_time")
        return ctx.export_time, ctx.export_time, "export_time"


def _uptime_time(export: float, uptime_ms: int, at_ms: int) -> float:
    """Epoch time of a sysUpTime stamp; the 32-bit uptime wraps every 49.7 days."""
    ago = (uptime_ms - at_ms) & 0xFFFFFFFF
    if ago >= 0x80000000:       # a stamp after the header's uptime (the exporter's skew)
        ago -= 1 << 32
    return export - ago / 1e3


def _pair(v: dict[int, int | bytes], lo: int, hi: int) -> tuple[int, int] | None:
    """A start/end pair when either is present (a missing one takes the other's value)."""
    a, b = v.get(lo), v.get(hi)
    a = a if isinstance(a, int) else None
    b = b if isinstance(b, int) else None
    if a is None and b is None:
        return None
    return (a if a is not None else b, b if b is not None else a)  # type: ignore[return-value]


def _ntp(value: int) -> float:
    """RFC 7011 dateTimeMicroseconds/Nanoseconds: NTP seconds since 1900 and a fraction."""
    return (value >> 32) - _NTP_EPOCH + (value & 0xFFFFFFFF) / 2**32


def _int(v: dict[int, int | bytes], *keys: int) -> int:
    for k in keys:
        x = v.get(k)
        if isinstance(x, int):
            return x
    return 0


def _opt(v: dict[int, int | bytes], key: int) -> int | None:
    x = v.get(key)
    return x if isinstance(x, int) else None


def _sampling_rate(v: dict[int, int | bytes]) -> int | None:
    """1-in-N from whichever sampling elements a record carries, else None.

    samplingInterval / samplerRandomInterval (v9 34 and 50) are N itself;
    PSAMP's samplingPacketInterval and samplingPacketSpace (305, 306) select
    ``interval`` packets then skip ``space``; samplingSize of
    samplingPopulation (309, 310) is random n-of-N.
    """
    if not _SAMPLING_FIELDS.intersection(v):
        return None
    for key in (SAMPLING_INTERVAL, SAMPLER_RANDOM_INTERVAL):
        x = v.get(key)
        if isinstance(x, int) and x > 0:
            return x
    interval, space = v.get(SAMPLING_PACKET_INTERVAL), v.get(SAMPLING_PACKET_SPACE)
    if isinstance(interval, int) and interval > 0 and isinstance(space, int):
        return max(1, round((interval + space) / interval))
    size, population = v.get(SAMPLING_SIZE), v.get(SAMPLING_POPULATION)
    if isinstance(size, int) and size > 0 and isinstance(population, int):
        return max(1, round(population / size))
    return None


def address_text(a: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(a) == 4 else socket.AF_INET6, a)
