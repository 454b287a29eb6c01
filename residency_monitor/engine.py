"""The sans-I/O core: captured frames in, flow records out.

Replay and live capture are thin drivers around :class:`Engine`: they hand
it ``(timestamp, link type, frame)`` and receive :class:`~.records.FlowRecord`
objects through a sink. The engine never reads the clock or touches a
socket, so a capture replayed from a file behaves exactly as it did live.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from . import decode as dec
from .dns import NameMap
from .flows import Flow, FlowConfig, FlowTable
from .inspect import Inspection
from .networks import DEFAULT_INTERNAL, NetworkSet
from .records import Enricher, FlowRecord, build

RecordSink = Callable[[FlowRecord], None]
#: (flow, packet time, stage) where stage is "first_packet" or "handshake": a live judge
LiveJudge = Callable[[Flow, float, str], None]


@dataclass
class EngineConfig:
    flows: FlowConfig = field(default_factory=FlowConfig)
    internal_networks: tuple[str, ...] = DEFAULT_INTERNAL
    #: handshake bytes per TCP direction; None: half of ``flows.reassembly_bytes_per_flow``
    reassembly_cap: int | None = None
    inspect: bool = True


@dataclass
class DecodeIssue:
    """The first frame that showed a decode problem, for a message naming it."""

    kind: str
    reason: str
    frame_number: int
    source: str


class Engine:
    """Decode, track and inspect; emit one record per flow end (and interim ones)."""

    def __init__(self, config: EngineConfig | None = None, sink: RecordSink | None = None,
                 live: LiveJudge | None = None, enrich: Enricher | None = None):
        self.config = config or EngineConfig()
        self.internal = NetworkSet(self.config.internal_networks)
        fc = self.config.flows
        cap = self.config.reassembly_cap or max(1, fc.reassembly_bytes_per_flow // 2)
        self.inspection = Inspection(
            cap, NameMap(max_entries=fc.dns_max_addresses),
            fc.reassembly_bytes_total) if self.config.inspect else None
        self.table = FlowTable(self.config.flows, self.inspection)
        self.sink = sink or (lambda r: None)
        self.live = live
        self.table.emit_new = live is not None
        self.enrich = enrich
        self.packets = 0
        self.bad: Counter[str] = Counter()          # "malformed", "truncated", ... -> frames
        # malformed and truncated frames again, by the protocol whose header was broken
        self.bad_protocol: Counter[str] = Counter()
        self.first_issue: dict[str, DecodeIssue] = {}
        self.records = 0

    def run(self, frames, source: str = "") -> None:
        """Consume an iterable of ``(ts, linktype, frame, wirelen)``: the hot loop."""
        decode = dec.decode
        packet = self.table.packet
        events = self.table.events
        frag = dec.FRAGMENT
        n = base = self.packets
        for ts, linktype, frame, _wirelen in frames:
            n += 1
            d = decode(frame, linktype)
            if d[0] >= frag:
                packet(ts, d, frame)
                if events:
                    self._drain()
            else:
                self._bad(d, n - base, source)
        self.packets = n

    def frame(self, ts: float, linktype: int, frame: bytes, source: str = "") -> None:
        """One frame (live capture path)."""
        self.packets += 1
        d = dec.decode(frame, linktype)
        if d[0] >= dec.FRAGMENT:
            self.table.packet(ts, d, frame)
            if self.table.events:
                self._drain()
        else:
            self._bad(d, self.packets, source)

    def advance(self, now: float) -> None:
        """Let packet time pass without packets (an idle live link): expire flows."""
        if now >= self.table.next_sweep:
            self.table.sweep(now)
            self._drain()

    def finish(self, give_up: Callable[[], bool] | None = None) -> int:
        """End of input: every open flow ends with reason ``end_of_capture``.

        With ``give_up`` (the daemon's stop deadline; the engine reads no
        clock), flows are ended and their records built a thousand at a time,
        answered flows first, until it returns True; the rest are dropped
        without a record. Returns how many were dropped: a daemon stopping
        under a flood with a million flows open must still exit before
        systemd kills it (about 50-100 us a record, sinks included).
        """
        if give_up is None:
            self.table.flush()
            self._drain()
            return 0
        for _ended in self.table.flush_in_steps():
            self._drain()
            if give_up():
                break
        return self.table.abandon()

    def _bad(self, d: tuple, n: int, source: str) -> None:
        kind = dec.KIND_NAMES.get(d[0], "other")
        self.bad[kind] += 1
        if d[0] == dec.MALFORMED or d[0] == dec.TRUNCATED:
            self.bad_protocol[malformed_protocol(d[1])] += 1
        if kind not in self.first_issue:
            self.first_issue[kind] = DecodeIssue(kind, d[1], n, source)

    def _drain(self) -> None:
        events = self.table.events
        internal, enrich = self.internal, self.enrich
        names = self.inspection.names if self.inspection is not None else None
        for kind, flow, arg in events:
            if kind == "end":
                self.records += 1
                self.sink(build(flow, arg, True, internal, enrich, names))
            elif kind == "interim":
                self.records += 1
                self.sink(build(flow, arg, False, internal, enrich, names))
            elif self.live is not None:
                self.live(flow, arg, "first_packet" if kind == "new" else "handshake")
        events.clear()

    @property
    def decode_errors(self) -> dict[str, int]:
        return dict(self.bad)

    @property
    def inspect_errors(self) -> dict[str, int]:
        return dict(self.inspection.errors) if self.inspection else {}


#: protocol names in decode's reasons, and the label they are counted under
_REASON_PROTOCOLS = (("IPv4", "ipv4"), ("IPv6", "ipv6"), ("TCP", "tcp"), ("UDP", "udp"),
                     ("ICMP", "icmp"))
MALFORMED_PROTOCOLS = ("link", *(label for _, label in _REASON_PROTOCOLS))


def malformed_protocol(reason: str) -> str:
    """The protocol whose header a decode failure's reason names (``link`` below IP).

    Reasons are decode.py's fixed strings ("bad TCP data offset", "IPv6 header"),
    so the label set is bounded whatever the traffic.
    """
    for word, label in _REASON_PROTOCOLS:
        if word in reason:
            return label
    return "link"
