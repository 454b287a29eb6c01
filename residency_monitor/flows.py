"""The flow table: bidirectional connections, their counters, timeouts and ends.

Mechanism only. The table knows nothing of geography, policy or protocols
above the transport header; a pluggable inspector (see ``inspect.py``) sees
the payload of flows whose handshake is still unparsed. Time is always packet
time: replaying a capture behaves exactly like live capture.

Per packet the work is one dict lookup and a few attribute updates. Both
directional keys of a flow point to the same :class:`Flow`, so no key has to be
canonicalised per packet (which would cost two slices and a comparison);
the price is a second dict entry per flow, measured in the benchmark.
Timeouts are checked in a sweep every ``sweep_interval`` seconds of packet
time rather than per packet, as Zeek batches its connection expiry.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .decode import key_fields, reverse_key
from .reassembly import Datagram

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

#: end reasons, as they appear in flow records
END_FIN, END_RST, END_IDLE, END_ACTIVE, END_CAPTURE, END_EVICTED, END_REUSED = (
    "fin", "rst", "idle", "active_timeout", "end_of_capture", "evicted", "port_reuse")


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """Timeouts in seconds of packet time, and the bounds on memory.

    The bounds are what a flood can fill, so each is configurable (the
    daemon's ``flows:`` section) and each excess is evicted and counted:
    ``max_flows`` flows, ``reassembly_bytes_per_flow`` handshake bytes per TCP
    flow (half per direction) and ``reassembly_bytes_total`` across all flows,
    ``max_reassembly_bytes`` of fragmented UDP datagrams, and
    ``dns_max_addresses`` server addresses in the DNS name map.
    """

    tcp_idle: float = 300.0
    tcp_closed: float = 30.0
    udp_idle: float = 60.0
    other_idle: float = 60.0
    active: float = 300.0
    max_flows: int = 1_000_000
    sweep_interval: float = 5.0
    max_fragments: int = 65536
    # UDP datagrams in IP fragments are put back together for the inspectors (DNS answers
    # over the path MTU); at most this many bytes held in all, for at most fragment_timeout
    # seconds each (Linux's ipfrag_time), the oldest given up first
    max_reassembly_bytes: int = 4 << 20
    fragment_timeout: float = 30.0
    # TCP handshakes are reassembled up to half this per direction (a ClientHello with a
    # post-quantum key share is 2 KB, a certificate chain 5-20 KB); all in-progress
    # handshakes together hold at most reassembly_bytes_total (see inspect.HandshakeBudget)
    reassembly_bytes_per_flow: int = 128 << 10
    reassembly_bytes_total: int = 64 << 20
    # server addresses whose DNS names are remembered (dns.NameMap's bound)
    dns_max_addresses: int = 200_000
    # capture.mode: handshake: the kernel passes only what decides verdicts, so a TCP flow's
    # bytes come from each side's sequence numbers at SYN and FIN/RST (see SeqFlow)
    seq_bytes: bool = False


class Inspector(Protocol):
    """Sees the packets of a flow until its handshake is understood."""

    def feed(self, flow: Flow, from_client: bool, ts: float, d: tuple, frame: bytes) -> bool:
        """Return True when done: the table then stops calling it."""
        ...


class Flow:
    """One bidirectional connection. ``c``/``s``: client and server side."""

    # Every slot costs 8 bytes per flow, and a float another 24: 1M flows must fit in
    # about 400 MB, so derivable facts (IP version, the next active-timeout
    # deadline) are computed when needed instead of stored.
    __slots__ = ("ckey", "proto", "vlan", "ts_first", "ts_last", "pk_c", "pk_s", "by_c", "by_s",
                 "fl_c", "fl_s", "insp", "hs", "interims", "client_from")

    def __init__(self, ckey: bytes, proto: int, vlan: int | None, ts: float, client_from: str):
        self.ckey = ckey
        self.proto = proto
        self.vlan = vlan
        self.ts_first = ts
        self.ts_last = ts
        self.pk_c = self.pk_s = self.by_c = self.by_s = self.fl_c = self.fl_s = 0
        self.insp: Any = None
        self.hs: Any = None
        self.interims = 0
        self.client_from = client_from

    @property
    def ip_version(self) -> int:
        return 4 if len(self.ckey) == 12 else 6

    @property
    def closed(self) -> bool:
        """RST seen, or FIN from both sides: the short closing timeout applies."""
        return bool((self.fl_c | self.fl_s) & RST) or bool(self.fl_c & self.fl_s & FIN)


class SeqFlow(Flow):
    """A flow in handshake mode: each side's initial and final sequence numbers too.

    The handshake filter drops most segments, so counting them would count
    little. TCP numbers every payload byte: a side's payload is its final
    sequence number (that of its FIN, after the FIN segment's own payload; or
    of its RST when it sent no FIN) minus its initial one (its SYN's) minus
    the SYN's own number. Payload bytes, not IP bytes: no headers, no
    retransmissions; exact when the side's SYN and FIN/RST were both seen
    (wrapping once past 4 GiB is not detectable: such flows count modulo 4 GiB).
    """

    __slots__ = ("isn_c", "isn_s", "end_c", "end_s")

    def __init__(self, ckey: bytes, proto: int, vlan: int | None, ts: float, client_from: str):
        super().__init__(ckey, proto, vlan, ts, client_from)
        self.isn_c: int | None = None
        self.isn_s: int | None = None
        self.end_c: int | None = None
        self.end_s: int | None = None

    def seq_bytes(self) -> dict[str, Any]:
        """A record's byte fields: from sequence numbers, or what the filter let through."""
        if self.proto == 6 and self.isn_c is not None and self.isn_s is not None \
                and self.end_c is not None and self.end_s is not None:
            return {"bytes_out": (self.end_c - self.isn_c - 1) & 0xFFFFFFFF,
                    "bytes_in": (self.end_s - self.isn_s - 1) & 0xFFFFFFFF,
                    "bytes_basis": "tcp_seq"}
        return {"bytes_basis": "filtered_ip"}


def _port_rank(port: int) -> int:
    """0 well-known, 1 registered, 2 ephemeral: the lower rank is likely the server."""
    return 0 if port < 1024 else (1 if port < 32768 else 2)


def client_is_sender(proto: int, a: int, sport: int, dport: int) -> tuple[bool, str]:
    """Decide from a flow's first packet whether its sender is the client.

    TCP: the sender of a SYN is the client; of a SYN-ACK, the server. Without
    either (capture started mid-flow, UDP, ICMP errors): the side on the more
    "service-like" port (well-known < registered < ephemeral) is the server;
    on a tie the first sender is the client. ICMP echo replies point back to
    the requester.
    """
    if proto == 6 and a & SYN:
        return (not a & ACK), "tcp_syn"
    if proto in (1, 58):
        if a in (8, 0, 128, 129):
            return a in (8, 128), "icmp_echo"
        return True, "icmp"
    rs, rd = _port_rank(sport), _port_rank(dport)
    if rs != rd:
        return rd < rs, "port_heuristic"
    return True, "first_packet"


Event = tuple  # ("new" | "handshake" | "end" | "interim", Flow, ts or end reason)


class FlowTable:
    """Tracks flows from decoded packets (see ``decode.py`` for the tuple layout)."""

    def __init__(self, config: FlowConfig | None = None,
                 inspector: Callable[[Flow, int, int], Inspector | None] | None = None):
        self.config = config or FlowConfig()
        self._tables: dict[int, dict[bytes, Flow]] = {}
        self._inspector = inspector
        self._fragments: dict[bytes, tuple[Flow, bool, float]] = {}
        # fragmented UDP datagrams of flows still inspected: fkey -> (first decode, Datagram)
        self._datagrams: dict[bytes, tuple[tuple, Datagram]] = {}
        self._datagram_bytes = 0
        self.count = 0
        self.events: list[Event] = []
        self.next_sweep = 0.0
        self.emit_new = False  # a live monitor wants ("new", flow, ts) to judge first packets
        self._flow_class: type[Flow] = Flow
        if self.config.seq_bytes:   # handshake mode; the default path stays as it was
            self._flow_class = SeqFlow
            self.packet = self._packet_seq   # type: ignore[method-assign]
        self.stats = {"flows_created": 0, "flows_evicted": 0, "fragments": 0,
                      "orphan_fragments": 0, "port_reuse": 0, "datagrams_reassembled": 0,
                      "datagrams_dropped": 0}

    # -- the per-packet path -------------------------------------------------
    def packet(self, ts: float, d: tuple, frame: bytes) -> None:
        """Account one decoded IP packet (``d[0] >= 0`` or FRAGMENT)."""
        proto, key, iplen, _vlan, a, _seq, _poff, _plen, _ver, fkey = d
        if proto < 0:
            self._fragment(ts, d, frame)
            return
        table = self._tables.get(proto)
        if table is None:
            table = self._tables[proto] = {}
        f = table.get(key)
        if f is None:
            f = self._new(table, ts, d)
        elif a & SYN and proto == 6 and not a & ACK and f.closed and key == f.ckey:
            self._end(f, END_REUSED)
            self.stats["port_reuse"] += 1
            f = self._new(table, ts, d)
        if key == f.ckey:
            c = True
            f.pk_c += 1
            f.by_c += iplen
            if proto == 6:
                f.fl_c |= a
        else:
            c = False
            f.pk_s += 1
            f.by_s += iplen
            if proto == 6:
                f.fl_s |= a
        f.ts_last = ts
        if fkey is not None:
            self._first_fragment(ts, fkey, f, c)
            if proto == 17 and f.insp is not None and self._hold_datagram(fkey, d, frame):
                if ts >= self.next_sweep:
                    self.sweep(ts)
                return  # the inspector sees the datagram once it is whole
        if f.insp is not None and f.insp.feed(f, c, ts, d, frame):
            f.insp = None
            self.events.append(("handshake", f, ts))
        if ts >= self.next_sweep:
            self.sweep(ts)

    def _packet_seq(self, ts: float, d: tuple, frame: bytes) -> None:
        """:meth:`packet`, then a TCP SYN, FIN or RST's sequence number noted on its flow."""
        a = d[4]
        if d[0] != 6 or not a & (SYN | FIN | RST):
            FlowTable.packet(self, ts, d, frame)
            return
        table = self._tables.get(6)
        before = table.get(d[1]) if table is not None else None
        FlowTable.packet(self, ts, d, frame)
        f = self._tables[6].get(d[1]) or before   # a SYN may have started a new flow
        if not isinstance(f, SeqFlow):
            return
        client, seq = d[1] == f.ckey, d[5]
        if a & SYN:
            if client:
                f.isn_c = seq
            else:
                f.isn_s = seq
        if a & (FIN | RST):
            end = (seq + max(0, d[7])) & 0xFFFFFFFF
            fin_before = (f.fl_c if client else f.fl_s) & FIN and not a & FIN
            if a & FIN or not fin_before:   # a RST after the side's FIN is one number later
                if client:
                    f.end_c = end
                else:
                    f.end_s = end

    def _new(self, table: dict[bytes, Flow], ts: float, d: tuple) -> Flow:
        if self.count >= self.config.max_flows:
            self._evict()
        key = d[1]
        _src, _dst, sport, dport = key_fields(key)
        sender_client, why = client_is_sender(d[0], d[4], sport, dport)
        ckey = key if sender_client else reverse_key(key)
        f = self._flow_class(ckey, d[0], d[3], ts, why)
        rkey = reverse_key(ckey)
        table[ckey] = f
        table[rkey] = f
        self.count += 1
        self.stats["flows_created"] += 1
        if self.emit_new:
            self.events.append(("new", f, ts))
        if self._inspector is not None:
            cport, sport2 = (sport, dport) if sender_client else (dport, sport)
            f.insp = self._inspector(f, cport, sport2)
            f.hs = f.insp
        return f

    # -- fragments -------------------------------------------------------------
    def _first_fragment(self, ts: float, fkey: bytes, f: Flow, from_client: bool) -> None:
        frags = self._fragments
        if len(frags) >= self.config.max_fragments:
            del frags[next(iter(frags))]
        frags[fkey] = (f, from_client, ts)
        self.stats["fragments"] += 1

    def _fragment(self, ts: float, d: tuple, frame: bytes) -> None:
        self.stats["fragments"] += 1
        fkey = d[1]
        entry = self._fragments.get(fkey)
        if entry is None:
            self.stats["orphan_fragments"] += 1
            return
        f, c, _ = entry
        if self._tables[f.proto].get(f.ckey) is not f:  # its flow ended: the record is out
            del self._fragments[fkey]
            self._drop_datagram(fkey)
            self.stats["orphan_fragments"] += 1
            return
        if c:
            f.pk_c += 1
            f.by_c += d[2]
        else:
            f.pk_s += 1
            f.by_s += d[2]
        f.ts_last = ts
        held = self._datagrams.get(fkey)
        if held is not None:
            self._datagram_fragment(ts, fkey, held, d, frame, f, c)

    # -- fragmented UDP datagrams -----------------------------------------------------
    def _hold_datagram(self, fkey: bytes, d: tuple, frame: bytes) -> bool:
        """Keep a first fragment's UDP payload until the rest arrives; False if it cannot be."""
        poff, plen = d[6], d[7]
        first = frame[poff:poff + plen]
        if len(first) < plen or poff < 8 or fkey in self._datagrams:
            return False  # cut by the snap length, or a duplicate first fragment: as it is
        dg = Datagram(frame[poff - 4] << 8 | frame[poff - 3], first)
        if dg.failed:
            self.stats["datagrams_dropped"] += 1
            return False
        self._datagrams[fkey] = (d, dg)
        self._datagram_bytes += dg.held
        self._trim_datagrams()
        return True

    def _datagram_fragment(self, ts: float, fkey: bytes, held: tuple[tuple, Datagram],
                           d: tuple, frame: bytes, f: Flow, c: bool) -> None:
        first_d, dg = held
        before = dg.held
        whole = dg.add(d[4], bool(d[5]), frame[d[6]:d[6] + d[7]])
        self._datagram_bytes += dg.held - before
        if dg.failed:
            self._drop_datagram(fkey)
            self.stats["datagrams_dropped"] += 1
            return
        if whole is None:
            self._trim_datagrams()
            return
        self._drop_datagram(fkey)
        self.stats["datagrams_reassembled"] += 1
        if f.insp is None:
            return
        # the inspector reads the payload at d[6]:d[6] + d[7] of the frame it is given
        whole_d = first_d[:6] + (0, len(whole)) + first_d[8:]
        if f.insp.feed(f, c, ts, whole_d, whole):
            f.insp = None
            self.events.append(("handshake", f, ts))

    def _drop_datagram(self, fkey: bytes) -> None:
        held = self._datagrams.pop(fkey, None)
        if held is not None:
            self._datagram_bytes -= held[1].held

    def _trim_datagrams(self) -> None:
        """Over the byte bound: give up the oldest datagrams first."""
        while self._datagram_bytes > self.config.max_reassembly_bytes and self._datagrams:
            self._drop_datagram(next(iter(self._datagrams)))
            self.stats["datagrams_dropped"] += 1

    @property
    def reassembly_bytes(self) -> int:
        """Bytes held for fragmented datagrams now (bounded by ``max_reassembly_bytes``)."""
        return self._datagram_bytes

    # -- expiry ----------------------------------------------------------------
    def _timeout(self, f: Flow) -> tuple[float, str]:
        cfg = self.config
        if f.proto == 6:
            if f.closed:
                return cfg.tcp_closed, END_RST if (f.fl_c | f.fl_s) & RST else END_FIN
            return cfg.tcp_idle, END_IDLE
        return (cfg.udp_idle if f.proto == 17 else cfg.other_idle), END_IDLE

    def sweep(self, now: float) -> None:
        """Expire idle and closed flows, emit interim records for long ones."""
        self.next_sweep = now + self.config.sweep_interval
        active = self.config.active
        expired = []
        for f in self.flows():
            timeout, reason = self._timeout(f)
            if f.ts_last + timeout <= now:
                expired.append((f, reason))
            elif now >= f.ts_first + (f.interims + 1) * active:
                f.interims = int((now - f.ts_first) // active)
                self.events.append(("interim", f, END_ACTIVE))
        for f, reason in expired:
            self._end(f, reason)
        horizon = now - self.config.tcp_closed
        stale = [k for k, (_, _, t) in self._fragments.items() if t < horizon]
        for k in stale:
            del self._fragments[k]
        horizon = now - self.config.fragment_timeout
        for k in [k for k in self._datagrams if self._fragments.get(k, (0, 0, 0.0))[2] < horizon]:
            self._drop_datagram(k)
            self.stats["datagrams_dropped"] += 1

    def _evict(self) -> None:
        """Table full: end the longest-idle 1% of flows in one pass (amortised O(1) per flow).

        One-sided flows (never answered: scans, floods from spoofed sources) go
        before any answered one, so a flood that fills the table evicts its own
        flows rather than the office's established connections (measured with
        benchmarks/bench_attacks.py: by idle time alone, the sample's quieter
        flows were split in two by a SYN flood).
        """
        n = max(1, self.count // 100)
        for f in heapq.nsmallest(n, self.flows(), key=_eviction_order):
            self._end(f, END_EVICTED)
            self.stats["flows_evicted"] += 1

    def _end(self, f: Flow, reason: str) -> None:
        insp = f.insp
        if insp is not None and insp.held:  # a handshake in progress: its bytes are freed
            insp.release()
        table = self._tables[f.proto]
        del table[f.ckey]
        table.pop(reverse_key(f.ckey), None)
        self.count -= 1
        self.events.append(("end", f, reason))

    def flush(self, reason: str = END_CAPTURE) -> None:
        """End every flow (end of capture or shutdown).

        A TCP flow already closed by FIN or RST keeps that as its end reason:
        it ended before the input did, it was only waiting out its grace period.
        """
        for f in list(self.flows()):
            if f.proto == 6 and f.closed:
                self._end(f, self._timeout(f)[1])
            else:
                self._end(f, reason)

    def flush_in_steps(self, step: int = 1000, reason: str = END_CAPTURE) -> Iterator[int]:
        """End every flow as :meth:`flush` does, ``step`` at a time, answered flows first.

        For a stop with a deadline (the daemon's, under a flood): the caller
        turns each step's events into records and may stop early; what then
        remains is :meth:`abandon`-ed. Flows that both sides spoke in come first:
        an unanswered SYN flood's flows matter least. Yields flows ended so far.
        """
        flows = list(self.flows())
        flows.sort(key=_unanswered)
        for i, f in enumerate(flows, 1):
            if f.ckey not in self._tables[f.proto]:
                continue        # ended meanwhile (never: the caller only builds records)
            if f.proto == 6 and f.closed:
                self._end(f, self._timeout(f)[1])
            else:
                self._end(f, reason)
            if not i % step:
                yield i
        yield len(flows)

    def abandon(self) -> int:
        """Forget every flow still open without a record (counted); how many there were."""
        left = self.count
        for table in self._tables.values():
            table.clear()
        self._fragments.clear()
        self.count = 0
        self.stats["flows_unflushed"] = self.stats.get("flows_unflushed", 0) + left
        return left

    def flows(self):
        """Each tracked flow once."""
        for table in self._tables.values():
            for k, f in table.items():
                if k is f.ckey:
                    yield f


#: how much idler than its idle time a one-sided flow counts when the table is full
ONE_SIDED_HEADSTART = 86400.0


def _eviction_order(f: Flow) -> float:
    return f.ts_last if f.pk_c and f.pk_s else f.ts_last - ONE_SIDED_HEADSTART


def _unanswered(f: Flow) -> bool:
    return not (f.pk_c and f.pk_s)

