"""Flow records: the one log line per connection that every later stage consumes.

Built once per flow end (or active-timeout interim), never per packet. The
field names are the documented JSON Lines schema (README, "Flow records").
"""

from __future__ import annotations

import dataclasses
import operator
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import fingerprint
from .apps import PLAINTEXT_APPS
from .dns import NameMap, doh_provider
from .flows import Flow
from .networks import NetworkSet, direction
from .quic import version_name as quic_version_name
from .tls_names import cipher_name, version_name

TRANSPORTS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}


# Not frozen: a frozen dataclass sets each of these 60-odd fields through object.__setattr__,
# which made building one cost 5.8 us instead of 2 (measured); sinks treat records as read-only.
@dataclass(slots=True, eq=True)
class FlowRecord:
    """One connection, as far as the capture shows it. "client" = the initiating side."""

    ts_start: float
    ts_end: float
    final: bool
    end_reason: str
    transport: str
    ip_version: int
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    direction: str
    vlan: int | None
    packets_out: int
    packets_in: int
    bytes_out: int
    bytes_in: int
    tcp_flags_out: str | None
    tcp_flags_in: str | None
    client_from: str
    app: str
    tls_version: str | None = None
    tls_client_versions: list[str] = field(default_factory=list)
    tls_sni: str | None = None
    tls_alpn: list[str] = field(default_factory=list)
    tls_alpn_chosen: str | None = None
    tls_cipher: str | None = None
    tls_ech: bool = False
    tls_sni_outer: str | None = None
    starttls: bool = False
    plaintext: bool = False
    http_method: str | None = None
    http_host: str | None = None
    server_names: list[str] = field(default_factory=list)
    encrypted_dns: str | None = None
    dns_provider: str | None = None
    tls_hrr: bool = False
    tls_ja3: str | None = None
    tls_ja3s: str | None = None
    tls_ja4: str | None = None
    quic_version: str | None = None
    icmp_id: int | None = None
    handshake_at: float | None = None
    payload: bool = False
    notes: list[str] = field(default_factory=list)
    # Where the destination is, and what the residency policy says (see residency.py)
    dst_country: str | None = None
    dst_country_source: str | None = None
    dst_country_basis: str | None = None
    dst_label: str | None = None
    dst_asn: int | None = None
    dst_as_org: str | None = None
    zone: str | None = None
    classification: str | None = None
    verdict: str | None = None
    violations: list[str] = field(default_factory=list)
    exception: str | None = None
    exception_expired: str | None = None
    explanation: str | None = None
    detected_at: float | None = None
    detection_latency_s: float | None = None
    # Where the record came from: "capture" (live or replay), or a flow export protocol
    # ("ipfix", "netflow_v9", "netflow_v5"; see collector.py), which carries no TLS metadata
    source: str = "capture"
    # What bytes_out/bytes_in count: "ip" every packet's IP length (full capture);
    # "tcp_seq" TCP payload bytes from sequence numbers at SYN and FIN/RST (capture.mode:
    # handshake; packets_* then count only the packets the handshake filter passed);
    # "filtered_ip" IP bytes of the packets the handshake filter passed (a lower bound)
    bytes_basis: str = "ip"

    def to_dict(self) -> dict[str, Any]:
        return dict(zip(FIELD_NAMES, _FIELD_VALUES(self), strict=True))

    def to_json(self) -> str:
        # orjson: 14 us a record with json.dumps, a third of a record's whole cost (measured
        # on the bench capture); same compact UTF-8 JSON
        return orjson.dumps(self).decode()   # orjson reads the dataclass's fields in order


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(FlowRecord))
_FIELD_VALUES = operator.attrgetter(*FIELD_NAMES)

_FLAG_LETTERS = "FSRPAUEC"  # FIN SYN RST PSH ACK URG ECE CWR, bit order


def flag_string(flags: int) -> str:
    """TCP flags seen, as letters in bit order (``SA`` = SYN and ACK)."""
    return "".join(ch for i, ch in enumerate(_FLAG_LETTERS) if flags >> i & 1)


def _addr(a: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(a) == 4 else socket.AF_INET6, a)


#: adds fields to a record being built: (flow, fields so far) -> None (see residency.py)
Enricher = Callable[[Flow, dict[str, Any]], None]


def build(flow: Flow, end_reason: str, final: bool, internal: NetworkSet,
          enrich: Enricher | None = None, names: NameMap | None = None) -> FlowRecord:
    """Turn a tracked flow (and what inspection found) into its record.

    ``names`` is the DNS name map: the names the client resolved to the
    server's address before the flow began become ``server_names``.
    """
    key = flow.ckey
    half = (len(key) - 4) >> 1
    caddr, saddr = key[:half], key[half:2 * half]
    cport, sport = key[-4] << 8 | key[-3], key[-2] << 8 | key[-1]
    icmp_id = None
    if flow.client_from == "icmp_echo":  # Zeek's convention: ports carry type and code
        icmp_id, cport, sport = cport, (8 if flow.proto == 1 else 128), 0
    tcp = flow.proto == 6
    base: dict[str, Any] = {
        "ts_start": flow.ts_first, "ts_end": flow.ts_last, "final": final,
        "end_reason": end_reason, "transport": TRANSPORTS.get(flow.proto, f"ip-{flow.proto}"),
        "ip_version": flow.ip_version, "client_ip": _addr(caddr), "client_port": cport,
        "server_ip": _addr(saddr), "server_port": sport,
        "direction": direction(caddr in internal, saddr in internal), "vlan": flow.vlan,
        "packets_out": flow.pk_c, "packets_in": flow.pk_s,
        "bytes_out": flow.by_c, "bytes_in": flow.by_s,
        "tcp_flags_out": flag_string(flow.fl_c) if tcp else None,
        "tcp_flags_in": flag_string(flow.fl_s) if tcp else None,
        "client_from": flow.client_from, "icmp_id": icmp_id,
    }
    seq = getattr(flow, "seq_bytes", None)   # handshake mode: flows.SeqFlow
    if seq is not None:
        base.update(seq())
    base.update(_handshake_fields(flow))
    if names is not None and base["direction"] in ("outbound", "external"):
        taken = getattr(flow.hs, "server_names", None)   # at the flow's first payload
        base["server_names"] = list(taken if taken is not None
                                    else names.names_for(caddr, saddr, flow.ts_first))
    base.update(_encrypted_dns(base, saddr))
    if enrich is not None:
        enrich(flow, base)
    return FlowRecord(**base)


def _encrypted_dns(fields: dict[str, Any], saddr: bytes) -> dict[str, Any]:
    """DNS over TLS (853) and over HTTPS/QUIC to a known public resolver, said as such."""
    port, app = fields["server_port"], fields["app"]
    if app not in ("tls", "quic") or port not in (443, 853):
        return {}
    provider = doh_provider(fields.get("tls_sni"), saddr)
    if port == 853:
        return {"encrypted_dns": "dot" if app == "tls" else "doq", "dns_provider": provider}
    if provider is not None:
        return {"encrypted_dns": "doh", "dns_provider": provider}
    return {}


def _handshake_fields(flow: Flow) -> dict[str, Any]:
    hs = flow.hs
    if hs is None:
        icmp = flow.proto in (1, 58)
        return {"app": TRANSPORTS[flow.proto] if icmp else "unknown", "payload": True}
    out: dict[str, Any] = {"app": hs.app or "unknown", "handshake_at": hs.decided_at,
                           "payload": hs.payload_seen}
    notes = [n for n in (hs.note, hs.tls_error and f"tls parse error: {hs.tls_error}") if n]
    out["notes"] = notes
    ch, sh = hs.client_hello, hs.server_hello
    if ch is not None:
        out.update(_client_hello_fields(ch, "q" if flow.proto == 17 else "t"))
    if sh is not None:
        out["tls_version"] = version_name(sh.version)
        out["tls_cipher"] = cipher_name(sh.cipher_suite) if not sh.sslv2 else None
        out["tls_alpn_chosen"] = sh.alpn
        j = fingerprint.ja3s(sh)
        out["tls_ja3s"] = j[1] if j else None
    out["tls_hrr"] = hs.hrr
    upgraded = getattr(hs, "starttls", False) and sh is not None
    out["starttls"] = upgraded
    out["plaintext"] = out["app"] in PLAINTEXT_APPS and not upgraded
    http = getattr(hs, "http", None)
    if http is not None:
        out["http_method"], out["http_host"] = http
    version = getattr(hs, "quic_version", None)
    if version is not None:
        out["quic_version"] = quic_version_name(version)
    return out


def _client_hello_fields(ch, transport: str) -> dict[str, Any]:
    ja3 = fingerprint.ja3(ch)
    ja4 = fingerprint.ja4(ch, transport)
    return {
        "tls_client_versions": [version_name(v) for v in ch.versions],
        "tls_sni": ch.sni,
        "tls_alpn": list(ch.alpn),
        "tls_ech": ch.ech,
        # with encrypted_client_hello the name seen is the outer, public one (real ECH or
        # GREASE look alike): say so, and let the policy also use DNS names and geolocation
        "tls_sni_outer": ch.sni if ch.ech else None,
        "tls_ja3": ja3[1] if ja3 else None,
        "tls_ja4": ja4[0] if ja4 else None,
    }
