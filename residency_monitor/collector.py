"""Flow records from routers and probes: NetFlow v5/v9 and IPFIX in, flow records out.

A site whose traffic does not pass the gateway's capture (a branch router, a
core switch, a cloud VPC's probe) can export what it saw. This module turns
those exports into the same :class:`~.records.FlowRecord` objects the engine
builds from packets, so the same geolocation, policy, metrics, alerts and
audit log apply. What flow export cannot show is said in every record:
``source`` names the protocol, ``notes`` says there is no TLS metadata, and
the policy's transport rules (TLS version, plaintext, no handshake) are not
judged (see :class:`ExportJudge`).

Layers, as elsewhere: :mod:`.netflow` decodes datagrams (pure);
:class:`FlowExportCollector` joins and builds records (sans-I/O: datagrams
and times in, records out through a sink); :class:`FlowExportInput` is the
thin socket driver the daemon polls in its loop instead of (or beside) the
packet capture.

Directions. Most exporters send one record per direction (softflowd, most
routers); replay's records are per connection. Two records of the same
exporter with reversed endpoints and overlapping times that arrive within
``join_window`` seconds of each other become one record; one whose partner
does not come in that window is reported alone (the other direction was not
seen, e.g. asymmetric routing). A biflow record (RFC 5103) is one record
already. The client is chosen as the flow table chooses it, with what flow
export keeps: TCP with a SYN in either direction: the direction that started
first (the SYN's sender); otherwise the side on the more service-like port
(``flows.client_is_sender``), ties to the earlier start.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .capture.live import LiveCapture, LiveCaptureError
from .flows import ACK, RST, SYN, Flow, client_is_sender
from .netflow import PROTOCOLS, ExportedFlow, FlowDecoder
from .networks import DEFAULT_INTERNAL, NetworkSet
from .records import FlowRecord, build

RecordSink = Callable[[FlowRecord], None]
Enricher = Callable[[Flow, dict[str, Any]], None]

SCHEMES = {"ipfix": 4739, "netflow": 2055}   # IANA's IPFIX port; the customary NetFlow port
JOIN_WINDOW = 2.0            # seconds (arrival time) a one-direction record waits for its peer
MAX_WAITING = 100_000        # records waiting for their other direction
RECV_BUDGET = 20_000         # datagrams read per loop turn, so capture is never starved
RCVBUF = 8 << 20             # exporters send in bursts when their cache expires

#: flowEndReason (IANA IPFIX, element 136) -> the flow record's end_reason
END_REASONS = {1: "idle", 2: "active_timeout", 3: "fin", 4: "end_of_capture", 5: "evicted"}
#: protocols whose port is as good as their content for the policy (residency-only or
#: not evaluated); every other flow stays ``unknown``: flow export carries no content
PORT_APPS = {(17, 53): "dns", (6, 53): "dns", (17, 123): "ntp", (17, 5353): "mdns"}
NO_TLS_NOTE = "flow export ({}): no TLS metadata; transport security not judged"
_ECHO = {8: 0, 0: 8, 128: 129, 129: 128}      # ICMP echo request <-> reply types


@dataclass(frozen=True)
class Source:
    """A configured listener: ``ipfix://HOST:PORT`` or ``netflow://HOST:PORT``."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_source(text: str) -> Source:
    """``ipfix://0.0.0.0:4739``, ``netflow://[::]:2055`` (port optional); ValueError if not."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"{text!r}: expected ipfix://HOST:PORT or netflow://HOST:PORT")
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"{text!r}: an IPv6 address goes in brackets: [::]:4739")
        port_text = tail[1:]
    else:
        host, _, port_text = rest.partition(":") if rest.count(":") <= 1 else (rest, "", "")
    if not host:
        raise ValueError(f"{text!r}: no address to listen on (0.0.0.0 for every one)")
    try:
        socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP,
                           flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"{text!r}: port {port_text!r} is not 1-65535")
    return Source(scheme, host, int(port_text) if port_text else SCHEMES[scheme])


# -- judging what flow export can show -------------------------------------------------------

class ExportJudge:
    """The enricher for flow-export records: source, notes, port apps, then the verdict.

    The residency stage judges the destination exactly as for captured
    flows. Transport security cannot be judged: flow export carries no
    handshake, so a ``no_handshake`` violation for every flow (what the
    policy says of a captured flow whose handshake was never seen) would be
    an alert storm that says nothing about the flows. The policy is asked
    knowing the record's ``source`` (FlowFacts.transport_visible false): its
    transport rules do not apply, and a compliant verdict says the transport
    was not judged.
    """

    def __init__(self, residency: Enricher | None):
        self.residency = residency
        self.extra: dict[str, Any] = {}

    def __call__(self, flow: Flow, fields: dict[str, Any]) -> None:
        fields.update(self.extra)
        if self.residency is None:
            return
        self.residency(flow, fields)   # source != "capture": transport rules not judged


# -- the sans-I/O collector ------------------------------------------------------------------

@dataclass(slots=True)
class _Waiting:
    flow: ExportedFlow
    due: float


class FlowExportCollector:
    """Datagrams in (with their exporter and arrival time), flow records out through ``sink``."""

    def __init__(self, sink: RecordSink, enrich: Enricher | None = None,
                 internal_networks: tuple[str, ...] = DEFAULT_INTERNAL,
                 join_window: float = JOIN_WINDOW, decoder: FlowDecoder | None = None):
        self.sink = sink
        self.judge = ExportJudge(enrich)
        self.internal = NetworkSet(internal_networks)
        self.join_window = join_window
        self.decoder = decoder or FlowDecoder()
        self.waiting: dict[tuple, list[_Waiting]] = {}
        self.waiting_count = 0
        self.stats = {"records": 0, "joined": 0, "alone": 0, "biflow": 0}
        self.exporters: set[str] = set()
        self._next_due = float("inf")

    def feed(self, datagram: bytes, exporter: str, now: float) -> None:
        if len(self.exporters) < 4096:
            self.exporters.add(exporter)
        for f in self.decoder.feed(datagram, exporter, now):
            self._flow(f, now)
        if now >= self._next_due:
            self.advance(now)

    def advance(self, now: float) -> None:
        """Report records whose other direction did not come within the join window."""
        if now < self._next_due:
            return
        self.decoder.expire(now)
        nxt = float("inf")
        for key in list(self.waiting):
            items = self.waiting[key]
            keep = [w for w in items if w.due > now]
            for w in items:
                if w.due <= now:
                    self._alone(w.flow)
            self.waiting_count -= len(items) - len(keep)
            if keep:
                self.waiting[key] = keep
                nxt = min(nxt, min(w.due for w in keep))
            else:
                del self.waiting[key]
        self._next_due = nxt

    def flush(self) -> None:
        """Stopping: every waiting record is reported as it is."""
        for items in self.waiting.values():
            for w in items:
                self._alone(w.flow)
        self.waiting.clear()
        self.waiting_count = 0
        self._next_due = float("inf")

    # -- joining

    def _flow(self, f: ExportedFlow, now: float) -> None:
        if f.biflow:
            self.stats["biflow"] += 1
            initiator_is_src = f.biflow_direction != 2
            a_pk, a_by, a_fl = f.packets, f.octets, f.tcp_flags
            b_pk, b_by, b_fl = f.rev_packets, f.rev_octets, f.rev_tcp_flags
            if initiator_is_src:
                self._emit(f, f.src, f.dst, *_ports(f), a_pk, b_pk, a_by, b_by, a_fl, b_fl,
                           f.start, f.end, "biflow")
            else:
                sp, dp = _ports(f)
                self._emit(f, f.dst, f.src, dp, sp, b_pk, a_pk, b_by, a_by, b_fl, a_fl,
                           f.start, f.end, "biflow")
            return
        key = _key(f)
        peer_key = _reverse_key(f)
        if peer_key is not None:
            items = self.waiting.get(peer_key)
            if items:
                for i, w in enumerate(items):
                    if _overlap(w.flow, f):
                        del items[i]
                        if not items:
                            del self.waiting[peer_key]
                        self.waiting_count -= 1
                        self._join(w.flow, f)
                        return
        if peer_key is None or self.join_window <= 0:
            self._alone(f)
            return
        if self.waiting_count >= MAX_WAITING:
            self.advance(float("inf"))    # memory bound: report everything waiting as it is
        self.waiting.setdefault(key, []).append(_Waiting(f, now + self.join_window))
        self.waiting_count += 1
        self._next_due = min(self._next_due, now + self.join_window)

    def _join(self, a: ExportedFlow, b: ExportedFlow) -> None:
        """Two directions of one connection: decide which sender is the client."""
        self.stats["joined"] += 1
        client_first, how = _client_of_pair(a, b)
        c, s = (a, b) if client_first else (b, a)
        cport, sport = _ports(c)
        self._emit(c, c.src, c.dst, cport, sport, c.packets, s.packets, c.octets, s.octets,
                   c.tcp_flags, s.tcp_flags, min(a.start, b.start), max(a.end, b.end), how,
                   sampling=max(a.sampling, b.sampling),
                   reason=_end_reason(a, b))

    def _alone(self, f: ExportedFlow) -> None:
        self.stats["alone"] += 1
        sender_is_client, how = _client_of_one(f)
        sp, dp = _ports(f)
        if sender_is_client:
            self._emit(f, f.src, f.dst, sp, dp, f.packets, 0, f.octets, 0, f.tcp_flags, 0,
                       f.start, f.end, how)
        else:
            self._emit(f, f.dst, f.src, dp, sp, 0, f.packets, 0, f.octets, 0, f.tcp_flags,
                       f.start, f.end, how)

    def _emit(self, f: ExportedFlow, caddr: bytes, saddr: bytes, cport: int, sport: int,
              pk_c: int, pk_s: int, by_c: int, by_s: int, fl_c: int, fl_s: int,
              start: float, end: float, how: str, sampling: int | None = None,
              reason: str | None = None) -> None:
        flow = Flow(caddr + saddr + bytes((cport >> 8 & 0xFF, cport & 0xFF,
                                           sport >> 8 & 0xFF, sport & 0xFF)),
                    f.proto, None, start, how)
        flow.ts_last = max(start, end)
        flow.pk_c, flow.pk_s, flow.by_c, flow.by_s = pk_c, pk_s, by_c, by_s
        flow.fl_c, flow.fl_s = fl_c, fl_s
        rate = sampling if sampling is not None else f.sampling
        notes = [NO_TLS_NOTE.format(f.protocol)]
        if rate > 1:
            notes.append(f"sampled 1 in {rate}: packet and byte counts are estimates")
        if f.timing != "exact":
            notes.append("times estimated from the export time (no exporter boot time)")
        extra: dict[str, Any] = {"source": f.protocol, "notes": notes}
        app = PORT_APPS.get((f.proto, sport))
        if app is not None:
            extra["app"] = app
        self.judge.extra = extra
        rec = build(flow, reason or _end_reason(f), True, self.internal, self.judge)
        self.stats["records"] += 1
        self.sink(rec)


def _ports(f: ExportedFlow) -> tuple[int, int]:
    """(source, destination) port; ICMP carries type and code there, as replay's records do."""
    if f.proto in (1, 58):
        tc = f.icmp_type_code if f.icmp_type_code is not None else f.dport
        return tc >> 8 & 0xFF, tc & 0xFF
    return f.sport, f.dport


def _key(f: ExportedFlow) -> tuple:
    sp, dp = _ports(f)
    if f.proto in (1, 58):
        return (f.exporter, f.proto, f.src, f.dst, sp)
    return (f.exporter, f.proto, f.src, f.dst, sp, dp)


def _reverse_key(f: ExportedFlow) -> tuple | None:
    """The key the other direction's record would have; None when there is none (ICMP errors)."""
    sp, dp = _ports(f)
    if f.proto in (1, 58):
        peer = _ECHO.get(sp)
        return None if peer is None else (f.exporter, f.proto, f.dst, f.src, peer)
    return (f.exporter, f.proto, f.dst, f.src, dp, sp)


def _overlap(a: ExportedFlow, b: ExportedFlow, slack: float = 1.0) -> bool:
    """The two records' times overlap: one connection, not a later reuse of the 5-tuple."""
    return a.start <= b.end + slack and b.start <= a.end + slack


def _client_of_pair(a: ExportedFlow, b: ExportedFlow) -> tuple[bool, str]:
    """(a's sender is the client, how it was decided)."""
    if a.proto in (1, 58):
        return _ports(a)[0] in (8, 128), "icmp"
    if a.proto == 6 and (a.tcp_flags | b.tcp_flags) & SYN:
        if a.tcp_flags & (SYN | ACK) == SYN:      # only a's side sent a bare SYN
            return True, "tcp_syn"
        if b.tcp_flags & (SYN | ACK) == SYN:
            return False, "tcp_syn"
        if a.start != b.start:
            return a.start < b.start, "tcp_syn"    # the SYN came first
    sender, how = client_is_sender(a.proto, 0, *_ports(a))
    if how == "port_heuristic":
        return sender, how
    return a.start <= b.start, "first_packet"


def _client_of_one(f: ExportedFlow) -> tuple[bool, str]:
    """One direction only: is its sender the client?"""
    if f.proto in (1, 58):
        return _ports(f)[0] not in (0, 129), "icmp"
    if f.proto == 6 and f.tcp_flags & SYN:
        if not f.tcp_flags & ACK:
            return True, "tcp_syn"                 # bare SYNs: an unanswered connection
        if f.tcp_flags & 0x3F == SYN | ACK:
            return False, "tcp_syn"                # only SYN-ACKs: the answering side
    return client_is_sender(f.proto, 0, *_ports(f))


def _end_reason(a: ExportedFlow, b: ExportedFlow | None = None) -> str:
    reasons = [r for r in (a.end_reason, b.end_reason if b else None) if r is not None]
    flags = a.tcp_flags | (b.tcp_flags if b else 0)
    if not reasons:
        return "exported"
    reason = 3 if 3 in reasons else (2 if 2 in reasons else reasons[0])
    if reason == 3 and flags & RST:
        return "rst"
    return END_REASONS.get(reason, "exported")


# -- the socket driver -----------------------------------------------------------------------

class FlowExportInput:
    """The daemon's input with flow-export sources: their UDP sockets, and the capture if any.

    It stands in for :class:`~.capture.live.LiveCapture` in the daemon's loop
    (``open``, ``read``, ``stats``, ``close``, ``interfaces``): ``read`` waits
    on the capture when there is one (and then drains the sockets without
    waiting; their kernel buffers hold a loop turn's datagrams), else on the
    sockets. Records go to the collector's sink in the loop's thread, as
    the engine's do, so no sink needs a lock.
    """

    def __init__(self, sources: tuple[Source, ...], collector: FlowExportCollector,
                 capture: LiveCapture | None = None,
                 clock: Callable[[], float] = time.time):
        self.sources = sources
        self.collector = collector
        self.capture = capture
        self.clock = clock
        self.socks: list[socket.socket] = []
        self.recv_errors = 0

    @property
    def interfaces(self) -> tuple[str, ...]:
        captured = self.capture.interfaces if self.capture is not None else ()
        return (*captured, *(s.url for s in self.sources))

    @property
    def ports(self) -> list[int]:
        """The bound ports (a source with port 0 gets one from the kernel: tests)."""
        return [s.getsockname()[1] for s in self.socks]

    def open(self) -> None:
        try:
            for src in self.sources:
                family = socket.AF_INET6 if ":" in src.host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                self.socks.append(sock)
                with contextlib.suppress(OSError):   # capped by rmem_max: a smaller one
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                sock.bind((src.host, src.port))
                sock.setblocking(False)
        except OSError as exc:
            self._close_socks()
            raise LiveCaptureError(f"flow export source: cannot listen on {src.url}: "
                                   f"{exc.strerror or exc}") from None
        if self.capture is not None:
            try:
                self.capture.open()
            except BaseException:
                self._close_socks()
                raise

    def read(self, timeout: float) -> list:
        if self.capture is not None:
            frames = self.capture.read(timeout)
        else:
            frames = []
            if self.socks:
                select.select(self.socks, [], [], timeout)
            else:
                time.sleep(timeout)
        self._drain()
        self.collector.advance(self.clock())
        return frames

    def _drain(self) -> None:
        feed, clock = self.collector.feed, self.clock
        budget = RECV_BUDGET
        for sock in self.socks:
            while budget:
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError as exc:      # e.g. ECONNREFUSED from an ICMP error: go on
                    if exc.errno not in (errno.ECONNREFUSED, errno.EINTR):
                        self.recv_errors += 1
                    break
                budget -= 1
                feed(data, addr[0], clock())

    def stats(self) -> dict[str, tuple[int, int]]:
        return self.capture.stats() if self.capture is not None else {}

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()
        self._drain()
        self._close_socks()
        self.collector.flush()

    def _close_socks(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks = []


# -- metrics ---------------------------------------------------------------------------------

class FlowExportMetrics(Collector):
    """``residency_flow_export_*`` series, read at scrape time (labels: protocol only).

    ``residency_flow_export_datagrams_total{protocol}``: datagrams received
    (``netflow_v5``, ``netflow_v9``, ``ipfix``, ``unknown``).
    ``residency_flow_export_records_total{protocol}``: flow data records decoded.
    ``residency_flow_export_malformed_total{protocol}``: datagrams whose
    decoding stopped at a malformed header, set or template (records before it are kept).
    ``residency_flow_export_no_template_total{protocol}``: data sets dropped
    because their template did not arrive within the hold time.
    ``residency_flow_export_sampled_records_total{protocol}``: records whose
    counts were multiplied by the exporter's sampling rate.
    ``residency_flow_export_joined_total``: pairs of one-direction records
    joined into one flow record; ``residency_flow_export_unpaired_total``:
    one-direction records reported alone.
    ``residency_flow_export_templates``, ``residency_flow_export_exporters``:
    templates held and exporter addresses seen (counts, never the addresses).
    """

    def __init__(self, collector: FlowExportCollector):
        self.c = collector

    def describe(self) -> Iterator[Metric]:
        return iter(())      # collected only at scrape time

    def collect(self) -> Iterator[Metric]:
        stats = _copy(self.c.decoder.stats)
        for what, name, doc in (
                ("datagrams", "datagrams", "Flow export datagrams received, by protocol."),
                ("records", "records", "Flow data records decoded, by protocol."),
                ("malformed", "malformed", "Flow export datagrams that could not be fully "
                                           "decoded, by protocol."),
                ("no_template", "no_template", "Data sets dropped for want of their template."),
                ("sampled", "sampled_records", "Records whose counts a sampling rate scaled.")):
            fam = CounterMetricFamily(f"residency_flow_export_{name}", doc, labels=["protocol"])
            for protocol in PROTOCOLS:
                fam.add_metric([protocol], float(stats.get((protocol, what), 0)))
            yield fam
        own = dict(self.c.stats)
        yield CounterMetricFamily("residency_flow_export_joined",
                                  "One-direction records joined into one flow record.",
                                  value=float(own["joined"]))
        yield CounterMetricFamily("residency_flow_export_unpaired",
                                  "One-direction records reported without their other "
                                  "direction.", value=float(own["alone"]))
        yield GaugeMetricFamily("residency_flow_export_templates", "Templates held.",
                                value=float(len(self.c.decoder.templates)))
        yield GaugeMetricFamily("residency_flow_export_exporters",
                                "Exporter addresses seen.", value=float(len(self.c.exporters)))


def _copy(counter: Any) -> dict:
    for _ in range(5):
        try:
            return dict(counter)
        except RuntimeError:    # grown by the loop's thread mid-copy
            continue
    return {}


def flow_export_input(sources: tuple[str, ...], sink: RecordSink, enrich: Enricher | None,
                      internal_networks: tuple[str, ...], capture: LiveCapture | None,
                      registry: CollectorRegistry | None = None) -> FlowExportInput:
    """The daemon's input for configured sources (already validated by the config)."""
    collector = FlowExportCollector(sink, enrich, internal_networks)
    if registry is not None:
        registry.register(FlowExportMetrics(collector))
    return FlowExportInput(tuple(parse_source(s) for s in sources), collector, capture)

