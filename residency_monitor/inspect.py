"""Handshake inspection: what a flow's first bytes say about it.

An inspector is attached to each new TCP or UDP flow and sees its packets
only until the handshake is understood; then the flow table stops calling it
and it stops buffering (its result stays on the flow as ``flow.hs``). TCP
payload is reassembled per direction (at most ``cap`` bytes each) and
re-parsed as it grows; the TLS parser is pure and stateless, so re-parsing a
few kilobytes a few times per connection is cheaper than keeping parser
state for every flow.

Memory: each direction holds at most ``cap`` bytes, and all in-progress TCP
handshakes together at most :class:`HandshakeBudget`'s limit. Past that limit
the handshake whose buffers grew least recently gives them up (its flow is
still tracked and judged; its record says why the handshake was not read), so
a flood of half-sent handshakes cannot hold more than the limit.
"""

from __future__ import annotations

from collections import Counter

from . import apps, dns, quic, tls
from .flows import RST, SYN, Flow
from .reassembly import StreamBuffer
from .wire import ParseError

#: bytes buffered per direction before giving up on a handshake
DEFAULT_CAP = 65536
#: bytes buffered by all in-progress TCP handshakes together (1,024 full-cap directions)
DEFAULT_TOTAL = 64 << 20
NOTE_CAP = "handshake larger than the reassembly cap"
NOTE_BOUND = "handshake buffers given up: reassembly memory bound reached"


class Handshake:
    """What inspection learnt about one flow (read when its record is built)."""

    payload_seen = True  # class-level: the flow carried payload (see AwaitPayload)
    held = 0             # class-level: bytes counted in the HandshakeBudget (TcpInspector's own)

    __slots__ = ("app", "client_hello", "server_hello", "client_hellos", "server_hellos",
                 "hrr", "tls_error", "decided_at", "note", "server_names")

    def __init__(self) -> None:
        self.app: str | None = None
        self.client_hello: tls.ClientHello | None = None   # the first one (fingerprints)
        self.server_hello: tls.ServerHello | None = None   # the last non-HRR one (negotiated)
        self.client_hellos = 0
        self.server_hellos = 0
        self.hrr = False
        self.tls_error: str | None = None
        self.decided_at: float | None = None   # packet time of the packet that completed it
        self.note: str | None = None
        # DNS names the client had resolved to the server when the flow began carrying data
        # (taken then: by the flow's end other clients' lookups may have crowded them out)
        self.server_names: tuple[str, ...] | None = None


class TcpInspector(Handshake):
    """Reassembles both directions' first bytes and parses the handshake."""

    __slots__ = ("bufs", "done_side", "server_port", "cap", "errors", "tls_start", "starttls",
                 "http", "dns", "dns_seen", "budget", "held")

    def __init__(self, server_port: int, cap: int, errors: Counter,
                 dns_watcher: DnsWatcher | None = None, budget: HandshakeBudget | None = None):
        super().__init__()
        self.bufs: list[StreamBuffer | None] = [None, None]  # [server->client, client->server]
        self.done_side = [False, False]
        self.server_port = server_port
        self.cap = cap
        self.errors = errors
        self.tls_start: list[int] | None = None  # where TLS begins in [server, client] data
        self.starttls = False
        self.http: tuple[str, str | None] | None = None   # first request's (method, host)
        self.dns = dns_watcher      # DNS over TCP: answers go to the shared name map
        self.dns_seen = 0           # answers of this stream already learnt
        self.budget = budget if budget is not None else HandshakeBudget(1 << 62)
        self.held = 0               # bytes of both directions, as counted by the budget

    def feed(self, flow: Flow, from_client: bool, ts: float, d: tuple, frame: bytes) -> bool:
        if self.bufs is _NO_BUFFERS:  # the budget took the buffers: done, unread
            return self._finish(ts, None)
        flags, seq, plen = d[4], d[5], d[7]
        side = 1 if from_client else 0
        buf = self.bufs[side]
        if flags & SYN:  # only a SYN with data (TCP Fast Open) gets here: see AwaitPayload
            if buf is None:
                buf = self.bufs[side] = StreamBuffer(self.cap)
            before = buf.buffered_bytes
            buf.set_isn(seq)   # may re-home (and drop) bytes held under an inferred start
            if buf.buffered_bytes != before:
                self.budget.grow(self, buf.buffered_bytes - before)
            seq = (seq + 1) & 0xFFFFFFFF
        if plen <= 0:
            return bool(flags & RST) and self._finish(ts, "reset before handshake")
        if self.done_side[side]:
            return False
        if buf is None:
            buf = self.bufs[side] = StreamBuffer(self.cap)
        off = d[6]
        before = buf.buffered_bytes
        changed = buf.add(seq, frame[off:off + plen])
        grown = buf.buffered_bytes - before
        if grown:
            self.budget.grow(self, grown)
            if self.bufs is _NO_BUFFERS:  # over the bound, and this handshake was the one
                return self._finish(ts, None)
        if not changed:
            if buf.overflowed:
                return self._give_up(side, ts, NOTE_CAP)
            return False
        return self._analyse(ts, flow)

    def drop_buffers(self) -> None:
        """The budget gave up this handshake: free its bytes; the next packet finishes it."""
        if not self.note:
            self.note = NOTE_BOUND
        self.bufs = _NO_BUFFERS
        self.done_side = _BOTH_DONE

    def release(self) -> None:
        """The flow ended (or the handshake was read): its bytes leave the budget."""
        if self.held:
            self.budget.release(self)

    def _analyse(self, ts: float, flow: Flow) -> bool:
        if self.app is None:
            cdata = self._data(1)
            sdata = self._data(0)
            self.app = apps.detect_tcp(cdata, sdata, self.server_port)
            if self.app is None:
                return False
        if self.app == "dns":
            return self._dns_answers(flow, ts)
        if self.app == "tls":
            self.tls_start = [0, 0]
        elif self.app in apps.STARTTLS_APPS and self.tls_start is None:
            return self._starttls(ts)
        if self.tls_start is not None:
            return self._tls(ts)
        return self._finish(ts, None)

    def _dns_answers(self, flow: Flow, ts: float) -> bool:
        """DNS over TCP: learn each complete answer once; keep reading the stream."""
        if self.dns is None:
            return False
        messages, _used = dns.split_tcp_messages(self._data(0))
        for message in messages[self.dns_seen:]:
            self.dns.learn(flow, message, ts)
        self.dns_seen = len(messages)
        return False

    def _starttls(self, ts: float) -> bool:
        """Follow a plaintext mail/file protocol until it upgrades to TLS, or clearly won't."""
        cdata, sdata = self._data(1), self._data(0)
        at = apps.find_starttls(self.app or "", cdata)
        if at is None:
            if (apps.committed_plaintext(self.app or "", cdata)
                    or len(cdata) > apps.STARTTLS_WINDOW or len(sdata) > apps.STARTTLS_WINDOW):
                return self._finish(ts, None)
            return False
        cstart = apps.tls_record_start(cdata, at)
        sstart = apps.tls_record_start(sdata, 0)
        if cstart is None or sstart is None:
            return False
        self.starttls = True
        self.tls_start = [sstart, cstart]
        return self._tls(ts)

    def _data(self, side: int) -> bytes:
        buf = self.bufs[side]
        return buf.data if buf is not None else b""

    def _tls(self, ts: float) -> bool:
        for side in (1, 0):
            if self.done_side[side]:
                continue
            data = self._data(side)[self.tls_start[side]:] if self.tls_start else b""
            if not data:
                continue
            try:
                msgs, ended = tls.read_handshake_messages(data)
            except ParseError as exc:
                self.errors["tls"] += 1
                self.tls_error = str(exc)
                self.done_side[side] = True
                continue
            self._take(side, msgs, ts)
            if ended:
                self.done_side[side] = True
        if self.server_hello is not None or all(self.done_side):
            return self._finish(ts, None)
        return False

    def _take(self, side: int, msgs: list[tuple[int, bytes]], ts: float) -> None:
        """Parse the hellos among a direction's complete handshake messages (SSLv2 too)."""
        want = 1 if side == 1 else 2
        hellos = [body for typ, body in msgs if typ == want]
        if side == 1:
            if len(hellos) > self.client_hellos and self.client_hello is None:
                self.client_hello = self._parse(tls.parse_client_hello, hellos[0])
            self.client_hellos = len(hellos)
            return
        for body in hellos[self.server_hellos:]:
            sh = self._parse(tls.parse_server_hello, body)
            if sh is None:
                continue
            if sh.hello_retry_request:
                self.hrr = True
            else:
                self.server_hello = sh
                self.decided_at = ts
        self.server_hellos = len(hellos)

    def _parse(self, parser, body: bytes):
        try:
            return parser(body)
        except ParseError as exc:
            self.errors["tls"] += 1
            self.tls_error = str(exc)
            return None

    def _give_up(self, side: int, ts: float, why: str) -> bool:
        self.done_side[side] = True
        self.note = why
        if all(self.done_side):
            return self._finish(ts, why)
        return False

    def _finish(self, ts: float, note: str | None) -> bool:
        if self.app == "http":
            self.http = apps.http_request(self._data(1))
        if self.decided_at is None:
            self.decided_at = ts
        if note and not self.note:
            self.note = note
        self.bufs = _NO_BUFFERS  # stop buffering: free the bytes now
        self.done_side = _BOTH_DONE
        if self.held:
            self.budget.release(self)
        return True


_NO_BUFFERS: list[StreamBuffer | None] = [None, None]   # shared by finished inspectors
_BOTH_DONE = [True, True]


class HandshakeBudget:
    """The bytes all in-progress TCP handshakes hold, and the bound on them.

    Each :class:`TcpInspector` reports how much its buffers grew or shrank.
    Over ``limit``, the inspectors whose buffers grew least recently give them
    up first: a legitimate handshake grows every round trip until it is read,
    while a flood of half-sent handshakes (or of segments that only fill
    gaps) must keep sending fresh in-window bytes to every connection to stay
    ahead, and stalls first. An attacker sending at R bytes/s can therefore
    only push out a handshake that has not grown for ``limit / R`` seconds.
    """

    __slots__ = ("limit", "held", "peak", "dropped", "dropped_bytes", "_holders")

    def __init__(self, limit: int = DEFAULT_TOTAL):
        if limit < 1:
            raise ValueError(f"the handshake reassembly bound must be positive, got {limit}")
        self.limit = limit
        self.held = 0              # bytes now
        self.peak = 0              # the most ever held after trimming (<= limit)
        self.dropped = 0           # handshakes whose buffers were given up
        self.dropped_bytes = 0
        # Inspectors holding bytes, least recently grown first (a dict keeps order, and
        # moving a key to the end is a pop and an insert).
        self._holders: dict[TcpInspector, None] = {}

    def grow(self, insp: TcpInspector, delta: int) -> None:
        self.held += delta
        insp.held += delta
        holders = self._holders
        holders.pop(insp, None)
        if insp.held > 0:
            holders[insp] = None
        if self.held > self.limit:
            self._trim()
        if self.held > self.peak:
            self.peak = self.held

    def release(self, insp: TcpInspector) -> None:
        self.held -= insp.held
        insp.held = 0
        self._holders.pop(insp, None)

    def _trim(self) -> None:
        holders = self._holders
        while self.held > self.limit and holders:
            victim = next(iter(holders))
            self.dropped += 1
            self.dropped_bytes += victim.held
            self.release(victim)
            victim.drop_buffers()

    @property
    def holders(self) -> int:
        """Handshakes holding bytes now."""
        return len(self._holders)


class AwaitPayload(Handshake):
    """Stands in for a TCP flow's inspector until the flow carries payload.

    One shared instance serves every flow that has only exchanged SYNs and
    ACKs, so a SYN flood or a port scan costs no inspection state (measured:
    a per-flow inspector built at the SYN tripled the memory of a 1M-flow
    table). The reassembly buffer then starts at the first data segment, and
    moves back if an earlier segment arrives late.
    """

    __slots__ = ("inspection",)
    payload_seen = False

    def __init__(self, inspection: Inspection):
        super().__init__()
        self.inspection = inspection

    def feed(self, flow: Flow, from_client: bool, ts: float, d: tuple, frame: bytes) -> bool:
        if d[7] <= 0:
            return False
        key = flow.ckey
        insp = self.inspection
        real = TcpInspector(key[-2] << 8 | key[-1], insp.cap, insp.errors, insp.dns, insp.budget)
        real.server_names = self.inspection.names_for(flow)
        flow.insp = flow.hs = real
        return real.feed(flow, from_client, ts, d, frame)


class UdpProbe(Handshake):
    """Labels a UDP flow from its first payload, with no per-flow state.

    The result is one shared :class:`Handshake` per application name, so a
    flood of one-packet UDP flows costs nothing here. QUIC and DNS parsing
    will hang their own per-flow inspectors on this decision.
    """

    __slots__ = ("_results", "errors", "dns")

    def __init__(self, errors: Counter, dns_watcher: DnsWatcher | None = None) -> None:
        super().__init__()
        self._results: dict[str, Handshake] = {}
        self.errors = errors
        self.dns = dns_watcher

    def feed(self, flow: Flow, from_client: bool, ts: float, d: tuple, frame: bytes) -> bool:
        payload = _payload(d, frame)
        if not payload:
            return False
        key = flow.ckey
        cport, sport = key[-4] << 8 | key[-3], key[-2] << 8 | key[-1]
        app = apps.detect_udp(payload, cport, sport)
        if app == "quic":
            real = QuicInspector(self.errors)
            if self.dns is not None:
                real.server_names = names_for(self.dns.names, flow)
            flow.insp = flow.hs = real
            return real.feed(flow, from_client, ts, d, frame)
        if app == "dns" and self.dns is not None:
            flow.hs = self._result("dns")
            flow.insp = self.dns   # DNS flows are a packet or two: keep reading the answers
            return self.dns.feed(flow, from_client, ts, d, frame)
        flow.hs = self._result(app)
        return True

    def _result(self, app: str) -> Handshake:
        result = self._results.get(app)
        if result is None:
            result = self._results[app] = Handshake()
            result.app = app
        return result


class DnsWatcher(Handshake):
    """Reads every DNS answer a client receives, to learn which names led to which addresses.

    One shared instance for all DNS flows (over UDP; DNS over TCP goes through
    :class:`TcpInspector`): its only state is the bounded :class:`~.dns.NameMap`.
    It never finishes, so each packet of a DNS flow passes here; such flows
    are a query and an answer.
    """

    __slots__ = ("names", "errors")

    def __init__(self, names: dns.NameMap, errors: Counter):
        super().__init__()
        self.app = "dns"
        self.names = names
        self.errors = errors

    def feed(self, flow: Flow, from_client: bool, ts: float, d: tuple, frame: bytes) -> bool:
        if not from_client:
            payload = _payload(d, frame)
            if payload:
                self.learn(flow, payload, ts)
        return False

    def learn(self, flow: Flow, message: bytes, ts: float) -> None:
        try:
            msg = dns.parse_message(message)
        except ParseError:
            self.errors["dns"] += 1
            return
        key = flow.ckey
        self.names.learn(msg, key[:(len(key) - 4) >> 1], ts)


class QuicInspector(Handshake):
    """Decrypts a QUIC flow's Initial packets until both hellos are read (see ``quic.py``).

    The hellos go through the same TLS parser as over TCP, and the flow gets
    one record with its TLS fields: QUIC is not counted twice.
    """

    __slots__ = ("quic", "errors")

    def __init__(self, errors: Counter):
        super().__init__()
        self.app = "quic"
        self.quic = quic.QuicHandshake()
        self.errors = errors

    def feed(self, flow: Flow, from_client: bool, ts: float, d: tuple, frame: bytes) -> bool:
        payload = _payload(d, frame)
        if not payload:
            return False
        q = self.quic
        done = q.feed(payload, from_client)
        if self.client_hello is None and q.client_hello is not None:
            self.client_hello, self.client_hellos = q.client_hello, 1
        if q.server_hello is not None and self.server_hello is None:
            if q.server_hello.hello_retry_request:
                self.hrr = True
            else:
                self.server_hello, self.decided_at = q.server_hello, ts
        if done:
            if q.error and q.server_hello is None:
                self.errors["quic"] += 1
                self.note = f"quic: {q.error}"
            if self.decided_at is None:
                self.decided_at = ts
        return done

    @property
    def quic_version(self) -> int | None:
        return self.quic.version


def names_for(names: dns.NameMap, flow: Flow) -> tuple[str, ...]:
    """The names the flow's client resolved to its server, as of the flow's first packet."""
    key = flow.ckey
    half = (len(key) - 4) >> 1
    return names.names_for(key[:half], key[half:2 * half], flow.ts_first)


def _payload(d: tuple, frame: bytes) -> bytes:
    """The transport payload of a decoded packet, as far as the frame holds it."""
    plen = d[7]
    return frame[d[6]:d[6] + plen] if plen > 0 else b""


class Inspection:
    """The inspector factory given to the flow table, with its error counters."""

    def __init__(self, cap: int = DEFAULT_CAP, names: dns.NameMap | None = None,
                 total: int = DEFAULT_TOTAL):
        self.cap = cap
        self.budget = HandshakeBudget(total)
        self.errors: Counter[str] = Counter()
        self.names = names if names is not None else dns.NameMap()
        self.dns = DnsWatcher(self.names, self.errors)
        self._await_payload = AwaitPayload(self)
        self._udp = UdpProbe(self.errors, self.dns)

    def names_for(self, flow: Flow) -> tuple[str, ...]:
        return names_for(self.names, flow)

    def __call__(self, flow: Flow, client_port: int,
                 server_port: int) -> AwaitPayload | UdpProbe | None:
        if flow.proto == 6:
            return self._await_payload
        if flow.proto == 17:
            return self._udp
        return None
