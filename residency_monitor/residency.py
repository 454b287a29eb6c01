"""The residency stage: where each flow's destination is, and what the policy says of it.

It joins mechanism and policy without mixing them: the flow table and the
inspectors supply facts, ``geo.py`` locates the destination, ``policy.py``
judges a small :class:`~.policy.FlowFacts`; this module only translates
between them. It runs once per flow record, never per packet.

Detection time: a verdict is "detected" at the packet that made it possible.
When the destination alone already decides it (a forbidden or unlocated
country, known from the first packet) that is the flow's first packet;
otherwise the packet that completed the handshake (TLS version, SNI); a flow
whose handshake never completed is decided when it ends.
"""

from __future__ import annotations

import socket
from typing import Any

from .dns import NameMap
from .flows import Flow
from .geo import Geolocator, GeoResult
from .networks import NetworkSet, direction
from .policy import FlowFacts, Policy, Verdict, evaluate
from .records import TRANSPORTS

_ENCRYPTED_APPS = frozenset(("tls", "quic", "ssh"))
_DESTINATION_RULES = frozenset(("residency", "geo_unknown"))


class Residency:
    """An enricher for :func:`records.build`: adds destination and verdict fields."""

    def __init__(self, policy: Policy, geo: Geolocator,
                 internal: NetworkSet | None = None, names: NameMap | None = None):
        self.policy = policy
        self.geo = geo
        self.internal = internal or NetworkSet()
        self.names = names   # DNS names per address, for live verdicts (records carry them)

    def __call__(self, flow: Flow, fields: dict[str, Any]) -> None:
        located = self._locate(flow, fields["direction"])
        fields["dst_country"] = located.country
        fields["dst_country_source"] = located.source
        fields["dst_country_basis"] = located.basis
        fields["dst_label"] = located.label
        fields["dst_asn"] = located.asn
        fields["dst_as_org"] = located.as_org
        facts = facts_from(flow, fields, located)
        verdict = evaluate(facts, self.policy)
        fields.update(verdict_fields(verdict))
        if verdict.verdict in ("compliant", "violation", "exempt"):
            at = self._detected_at(facts, verdict, fields)
            fields["detected_at"] = at
            fields["detection_latency_s"] = round(at - fields["ts_start"], 6)

    def judge_live(self, flow: Flow, ts: float, stage: str) -> tuple[Verdict, FlowFacts] | None:
        """A violation known at this packet (the flow's first, or its handshake), else None.

        The live daemon alerts on it at once instead of waiting for the flow
        to end. At the first packet only a violation the destination alone
        decides counts (see :meth:`_decided_by_destination`).
        """
        fields = _live_fields(flow, self.internal, self.names)
        if fields["direction"] != "outbound":
            return None
        located = self._locate(flow, "outbound")
        facts = facts_from(flow, fields, located)
        if stage == "first_packet":
            facts = _first_packet_facts(facts, fields["ts_start"])
        verdict = evaluate(facts, self.policy)
        if verdict.verdict != "violation":
            return None
        if stage == "first_packet" and not self._decided_by_destination(facts, verdict, fields):
            return None
        return verdict, facts

    def _locate(self, flow: Flow, direction: str) -> GeoResult:
        if direction not in ("outbound", "external"):
            return _NOWHERE  # the destination is one of ours
        key = flow.ckey
        half = (len(key) - 4) >> 1
        return self.geo.lookup(key[half:2 * half])

    def _detected_at(self, facts: FlowFacts, verdict: Verdict, fields: dict[str, Any]) -> float:
        """The first packet if the destination alone gives the same violation, else the handshake.

        Only a violation can be known that early: compliance (and an exemption,
        which also needs the remaining rules to pass) waits for the TLS version.
        """
        if verdict.verdict == "violation" and self._decided_by_destination(facts, verdict, fields):
            return fields["ts_start"]
        if fields.get("handshake_at") is not None:
            return fields["handshake_at"]
        return fields["ts_end"]

    def _decided_by_destination(self, facts: FlowFacts, verdict: Verdict,
                                fields: dict[str, Any]) -> bool:
        """Would the first packet's facts alone have given this violation, for certain?

        Yes when every rule it breaks depends on the destination alone
        (residency, geo_unknown): exceptions by address, AS or country match
        the same destination at the first packet as at the last. Not when an
        exception matching by server name could apply to the zone: a live
        monitor must then wait for the SNI before it may alert. (No second
        evaluation is needed: this runs for every violating record.)
        """
        if not set(verdict.violations) <= _DESTINATION_RULES:
            return False   # the first packet alone can only show these
        return not any(e.sni and (e.zones is None or verdict.zone in e.zones)
                       for e in self.policy.exceptions)


_NOWHERE = GeoResult(country=None, source=None, basis=None)


def _first_packet_facts(facts: FlowFacts, ts: float) -> FlowFacts:
    """What the first packet alone shows: endpoints and destination, nothing of the payload."""
    return FlowFacts(
        client_ip=facts.client_ip, server_ip=facts.server_ip, server_port=facts.server_port,
        transport=facts.transport, app="unknown", direction=facts.direction, ts=ts,
        payload=False, country=facts.country, country_source=facts.country_source,
        asn=facts.asn, client_sent=facts.client_sent)


def _live_fields(flow: Flow, internal: NetworkSet, names: NameMap | None) -> dict[str, Any]:
    """The record fields the policy needs, for a flow still in progress."""
    key = flow.ckey
    half = (len(key) - 4) >> 1
    caddr, saddr = key[:half], key[half:2 * half]
    hs = flow.hs
    ch = getattr(hs, "client_hello", None)
    return {
        "server_names": (getattr(hs, "server_names", None)
                         or (names.names_for(caddr, saddr, flow.ts_first) if names else ())),
        "client_ip": _ntop(caddr), "server_ip": _ntop(saddr),
        "server_port": key[-2] << 8 | key[-1], "transport": TRANSPORTS.get(flow.proto, "ip"),
        "app": (getattr(hs, "app", None) or "unknown"),
        "direction": direction(caddr in internal, saddr in internal),
        "ts_start": flow.ts_first, "ts_end": flow.ts_last,
        "handshake_at": getattr(hs, "decided_at", None),
        "payload": getattr(hs, "payload_seen", True), "tls_sni": ch.sni if ch else None,
    }


def _ntop(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def facts_from(flow: Flow, fields: dict[str, Any], located: GeoResult) -> FlowFacts:
    """The policy's view of a flow record being built."""
    hs = flow.hs
    server_hello = getattr(hs, "server_hello", None)
    app = fields["app"]
    encrypted = app in _ENCRYPTED_APPS or (getattr(hs, "starttls", False)
                                           and server_hello is not None)
    handshake_ts = fields.get("handshake_at")
    return FlowFacts(
        client_ip=fields["client_ip"], server_ip=fields["server_ip"],
        server_port=fields["server_port"], transport=fields["transport"], app=app,
        direction=fields["direction"],
        ts=handshake_ts if handshake_ts is not None else fields["ts_start"],
        tls_version=server_hello.version if server_hello is not None else None,
        encrypted=encrypted, payload=fields.get("payload", True),
        transport_visible=fields.get("source", "capture") == "capture",
        client_sent=flow.pk_c > 0,
        sni=fields.get("tls_sni"), server_names=tuple(fields.get("server_names") or ()),
        country=located.country,
        country_source=located.source, asn=located.asn)


def verdict_fields(v: Verdict) -> dict[str, Any]:
    return {"zone": v.zone, "classification": v.classification, "verdict": v.verdict,
            "violations": list(v.violations), "exception": v.exception,
            "exception_expired": v.exception_expired, "explanation": v.explanation}
