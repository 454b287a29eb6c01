"""Prometheus metrics: what the monitor saw and decided, as bounded time series.

Two kinds of state, kept apart so the capture path never pays for a scrape:

- **Flow events** (one final flow record, one verdict, one delivered alert)
  update a few in-process tallies under one short lock. Nothing here runs
  per packet. Interim records (flows that outlived the active timeout) add
  only the bytes they carry beyond what was already counted, so a long
  upload shows up every active-timeout period and a flow is never counted
  twice; flow, violation and handshake counts wait for the final record.
- **Live state** (the flow table, kernel capture counters, the geolocation
  databases, the alert queue) is read at scrape time by the collector from
  the sources given to :meth:`Metrics.attach`: reading a few integers costs
  nothing per packet and takes no lock the capture thread holds.

Every series, ``residency_`` + thing + base unit (Prometheus naming):

Flows and bytes (from final records; bytes also from interim records)
  ``residency_flows_total{verdict}``: flows ended, by verdict (``compliant``,
  ``violation``, ``exempt``, ``not_evaluated``; ``none`` when no policy ran).
  ``residency_sent_bytes_total{verdict}``, ``residency_received_bytes_total{verdict}``:
  IP-layer bytes sent by the initiating side (``bytes_out``) and by the
  answering side (``bytes_in``). Two metrics, not a direction label, as the
  Prometheus exporter guide asks for send/receive.
  ``residency_violations_total{rule, network_zone, country}``: one per rule a
  flow still violates (a flow breaking residency and TLS counts once under
  each rule; count flows with ``residency_flows_total{verdict="violation"}``).
  ``residency_exemptions_total{network_zone, country}``: flows allowed by an
  approved exception (exempt flows are counted, never hidden).
  ``residency_tls_handshakes_total{version}``: negotiated TLS versions
  (``TLS 1.3`` ... ``SSL 2.0``, ``DTLS 1.x``, ``TLS 1.3 draft``, ``other``).
  ``residency_flows_located_total{source}``: judged flows whose destination was
  located, by who located it (``override``, ``maxmind``, ``dbip``, ``ipinfo``, ``rir``).

Visibility (judged outbound flows: the compliance summary's definitions)
  ``residency_outbound_bytes_total``: bytes (both directions) of judged outbound flows.
  ``residency_outbound_sent_bytes_total{network_zone, country}``: what internal clients
  sent in them, by destination country ("unlocated" when unknown): the data-flow map.
  ``residency_outbound_located_bytes_total``: of those, with a located destination.
  ``residency_outbound_classified_bytes_total``: located and with the encryption
  established (no ``no_handshake`` violation): what the monitor could fully judge.
  ``residency_visibility_ratio``: classified / outbound bytes since start (NaN
  before any outbound byte). For a window use the counters:
  ``rate(..._classified_bytes_total[1h]) / rate(residency_outbound_bytes_total[1h])``.

Latency
  ``residency_detection_latency_seconds``: histogram, a flow's first packet to
  its verdict (:meth:`Metrics.observe_verdict`), 1 ms to 60 s buckets.
  ``residency_alert_delivery_seconds``: histogram, verdict to the alert accepted
  by Alertmanager, retries included.

Capture and the engine (read at scrape time)
  ``residency_active_flows``: flows in the table now.
  ``residency_packets_processed_total``: frames the engine processed.
  ``residency_packets_captured_total{interface}``, ``residency_packets_dropped_total{interface}``:
  the kernel's packet socket counters (received, dropped for lack of buffer).
  ``residency_packets_malformed_total{kind}``: frames that could not be decoded
  (``malformed``, ``truncated``, ``not_ip``, ``unknown_link``, ``other``).
  ``residency_handshake_errors_total{protocol}``: handshakes that failed to parse
  (``tls``, ``quic``) and DNS answers that did not (``dns``); the flow is kept.
  ``residency_malformed_headers_total{protocol}``: malformed and truncated frames
  again, by the header that was broken (``link``, ``ipv4``, ``ipv6``, ``tcp``,
  ``udp``, ``icmp``).
  ``residency_flows_evicted_total``: flows ended early because the table was full.

Memory bounds under a flood (read at scrape time; see FlowConfig for the bounds)
  ``residency_handshake_buffers_dropped_total``: in-progress TCP handshakes whose
  buffers were given up because all of them together reached
  ``reassembly_bytes_total`` (the flow is kept and judged, its record has a note).
  ``residency_datagrams_dropped_total``: fragmented UDP datagrams given up (over
  the byte bound, timed out, or inconsistent fragments).
  ``residency_dns_addresses_evicted_total``: addresses the DNS name map forgot
  before their TTL because it held ``dns_max_addresses``.
  ``residency_reassembly_bytes{kind}``: bytes held now, ``handshake`` (TCP) or
  ``datagram`` (IP fragments).
  ``residency_dns_addresses``: addresses in the DNS name map now.

Policy
  ``residency_policy_reloads_total{result}``: policy loads (the first at start
  included), ``success`` or ``failure``.
  ``residency_policy_info{name, sha256, as_of}``: the policy in force (a failed
  reload keeps the previous one, and so does this series).
  ``residency_policy_last_reload_successful``: 1 if the last load succeeded, else 0.
  ``residency_policy_last_reload_timestamp_seconds``: when the policy in force was loaded.

Geolocation (read at scrape time)
  ``residency_geo_database_build_timestamp_seconds{source}``,
  ``residency_geo_database_age_seconds{source}``: the database's build time and
  age (alert on age: databases are refreshed weekly or monthly).
  ``residency_geo_database_last_reload_successful{source}``: 0 while a replaced
  file cannot be used (the previous one stays in service).
  ``residency_geo_lookup_errors_total{source}``: records that failed to decode.
  ``source`` is short and path-free: the kind that answers in flow records,
  a colon and the file's ``database_type``, e.g. ``maxmind:GeoLite2-City``,
  ``asn:GeoLite2-ASN``, ``rir:iptocc``.

Alerts (read at scrape time from ``alerts.stats()``)
  ``residency_alerts_sent_total``, ``residency_alerts_failed_total{reason}``,
  ``residency_alerts_queued``, ``residency_alerts_dropped_total``,
  ``residency_alerts_evicted_total`` (forgotten early: ``max_alerts`` held at once),
  ``residency_alert_retries_total``.

Audit log (read at scrape time from the audit writer, see audit.py)
  ``residency_audit_records_total{kind}``: entries appended, by entry type
  (``verdict``, ``flow``, ``policy``, ``checkpoint`` ...; ``kind`` and not
  ``type``, which the Prometheus guide asks to avoid as a label name).
  ``residency_audit_write_errors_total``: failed writes, syncs or segment
  openings (disk full, read-only); capture goes on, the next entry retries.
  ``residency_audit_last_write_timestamp_seconds``: when the last entry was
  written (alert when it stops moving while flows are seen).

Flow export (registered by collector.py only when ``sources:`` are configured)
  ``residency_flow_export_*``: datagrams, records, malformed datagrams,
  data sets without a template and sampled records by ``protocol``
  (``netflow_v5``, ``netflow_v9``, ``ipfix``, ``unknown``); joined and
  unpaired one-direction records; templates held; exporters seen. See
  :class:`~.collector.FlowExportMetrics`.

Build
  ``residency_build_info{version, python}``.

Labels are bounded by construction and never carry an IP address, a port, a
host name (SNI) or a fingerprint: those belong in flow records and alert
annotations. ``network_zone`` is the policy's zone (not ``zone``, which the
Prometheus guide reserves for target labels such as a cloud availability
zone). Worst cases: ``country`` at most 250 ISO codes plus ``unlocated``;
``rule`` 5; ``network_zone`` the configured zones plus ``default``. So
``residency_violations_total`` is at most 5 x zones x 251 series (6,275 with
4 zones) but only combinations that fired exist: an office sees a few dozen.
``residency_exemptions_total`` is at most zones x 251. Every other metric
has fewer than 20 series (interfaces and geolocation sources as configured).
"""

from __future__ import annotations

import bisect
import logging
import math
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from .decode import KIND_NAMES
from .engine import MALFORMED_PROTOCOLS
from .policy import RULES, VERDICTS
from .records import FlowRecord

__all__ = ["ALERT_DELIVERY_BUCKETS", "DETECTION_BUCKETS", "METRIC_NAMES", "Metrics", "UNLOCATED",
           "geo_source_name"]

log = logging.getLogger(__name__)

#: First packet -> verdict: a destination decides within a millisecond, a
#: handshake within a round trip or two, a stalled handshake at the flow's end.
DETECTION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Verdict -> accepted by Alertmanager: milliseconds when it is up, retries beyond.
ALERT_DELIVERY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

UNLOCATED = "unlocated"
NO_VERDICT = "none"
NO_ZONE = "none"
OTHER = "other"
#: Long flows whose interim bytes are remembered; beyond it a flow's bytes wait for its end.
MAX_PENDING_INTERIM = 100_000

_TLS_VERSIONS = frozenset({"SSL 2.0", "SSL 3.0", "TLS 1.0", "TLS 1.1", "TLS 1.2", "TLS 1.3",
                           "DTLS 1.0", "DTLS 1.2", "DTLS 1.3"})
_LOCATING_SOURCES = frozenset({"override", "maxmind", "dbip", "ipinfo", "rir"})
# geo.SourceStatus.kind -> the source name flow records carry
_GEO_SOURCE_OF_KIND = {"country": "maxmind", "city": "maxmind", "dbip": "dbip",
                       "ipinfo": "ipinfo", "asn": "asn", "isp": "asn", "rir": "rir"}
_MAX_LABEL_LEN = 64


# --------------------------------------------------------------------------------------------
# The series: one table, so describe(), collect() and the docstring name the same things
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Spec:
    name: str          # full name; counters without "_total" (the client library appends it)
    kind: str          # counter | gauge | histogram | info
    doc: str
    labels: tuple[str, ...] = ()


_SPECS: dict[str, _Spec] = {s.name: s for s in (
    _Spec("residency_flows", "counter", "Flows ended, by verdict.", ("verdict",)),
    _Spec("residency_sent_bytes", "counter",
          "IP-layer bytes sent by the initiating side of flows, by verdict.", ("verdict",)),
    _Spec("residency_received_bytes", "counter",
          "IP-layer bytes sent by the answering side of flows, by verdict.", ("verdict",)),
    _Spec("residency_violations", "counter",
          "Policy rules violated by ended flows (one per rule per flow).",
          ("rule", "network_zone", "country")),
    _Spec("residency_exemptions", "counter",
          "Flows allowed by an approved exception.", ("network_zone", "country")),
    _Spec("residency_tls_handshakes", "counter",
          "Ended flows with a TLS handshake, by negotiated version.", ("version",)),
    _Spec("residency_flows_located", "counter",
          "Judged outbound flows whose destination was located, by who located it.",
          ("source",)),
    _Spec("residency_outbound_bytes", "counter", "Bytes of judged outbound flows."),
    _Spec("residency_outbound_sent_bytes", "counter",
          "Bytes internal clients sent in judged outbound flows, by zone and destination "
          "country (the data-flow map).", ("network_zone", "country")),
    _Spec("residency_outbound_located_bytes", "counter",
          "Bytes of judged outbound flows whose destination was located."),
    _Spec("residency_outbound_classified_bytes", "counter",
          "Bytes of judged outbound flows located and with their encryption established."),
    _Spec("residency_visibility_ratio", "gauge",
          "Share of outbound bytes located and classified, since start."),
    _Spec("residency_detection_latency_seconds", "histogram",
          "Time from a flow's first packet to its verdict."),
    _Spec("residency_alert_delivery_seconds", "histogram",
          "Time from a verdict to its alert being accepted by Alertmanager."),
    _Spec("residency_active_flows", "gauge", "Flows in the flow table."),
    _Spec("residency_packets_processed", "counter", "Frames processed by the engine."),
    _Spec("residency_packets_captured", "counter",
          "Packets received by the kernel packet socket.", ("interface",)),
    _Spec("residency_packets_dropped", "counter",
          "Packets the kernel dropped before the monitor could read them.", ("interface",)),
    _Spec("residency_packets_malformed", "counter",
          "Frames that could not be decoded, by kind.", ("kind",)),
    _Spec("residency_handshake_errors", "counter",
          "Handshakes that failed to parse (the flow is kept), by protocol.", ("protocol",)),
    _Spec("residency_flows_evicted", "counter", "Flows ended early because the table was full."),
    _Spec("residency_malformed_headers", "counter",
          "Malformed or truncated frames, by the protocol whose header was broken.",
          ("protocol",)),
    _Spec("residency_handshake_buffers_dropped", "counter",
          "In-progress TCP handshakes whose buffers were given up at the reassembly bound."),
    _Spec("residency_datagrams_dropped", "counter",
          "Fragmented UDP datagrams given up (byte bound, timeout, inconsistent fragments)."),
    _Spec("residency_dns_addresses_evicted", "counter",
          "Addresses the DNS name map evicted before their TTL because it was full."),
    _Spec("residency_reassembly_bytes", "gauge",
          "Bytes held for reassembly now, TCP handshakes or IP-fragmented datagrams.",
          ("kind",)),
    _Spec("residency_dns_addresses", "gauge", "Server addresses in the DNS name map."),
    _Spec("residency_policy_reloads", "counter",
          "Policy loads, the first included, by result.", ("result",)),
    _Spec("residency_policy", "info", "The residency policy in force.",
          ("name", "sha256", "as_of")),
    _Spec("residency_policy_last_reload_successful", "gauge",
          "Whether the last policy load succeeded."),
    _Spec("residency_policy_last_reload_timestamp_seconds", "gauge",
          "When the policy in force was loaded."),
    _Spec("residency_geo_database_build_timestamp_seconds", "gauge",
          "Build time of each geolocation database.", ("source",)),
    _Spec("residency_geo_database_age_seconds", "gauge",
          "Age of each geolocation database.", ("source",)),
    _Spec("residency_geo_database_last_reload_successful", "gauge",
          "Whether the last (re)load of each geolocation database succeeded.", ("source",)),
    _Spec("residency_geo_lookup_errors", "counter",
          "Geolocation records that failed to decode.", ("source",)),
    _Spec("residency_alerts_sent", "counter", "Alerts accepted by Alertmanager."),
    _Spec("residency_alerts_failed", "counter",
          "Alert deliveries that failed, by reason.", ("reason",)),
    _Spec("residency_alerts_queued", "gauge", "Alerts waiting to be delivered."),
    _Spec("residency_alerts_dropped", "counter", "Alerts dropped (queue full or given up)."),
    _Spec("residency_alerts_evicted", "counter",
          "Alerts forgotten early because alertmanager.max_alerts were remembered at once."),
    _Spec("residency_alert_retries", "counter", "Alert delivery retries."),
    _Spec("residency_audit_records", "counter", "Audit log entries appended, by type.",
          ("kind",)),
    _Spec("residency_audit_write_errors", "counter",
          "Audit log writes that failed (capture goes on; the next entry retries)."),
    _Spec("residency_audit_last_write_timestamp_seconds", "gauge",
          "When the last audit log entry was written."),
    _Spec("residency_build", "info", "Version of residency-monitor and Python.",
          ("version", "python")),
)}

METRIC_NAMES: tuple[str, ...] = tuple(_SPECS)
_TALLY_COUNTERS: tuple[str, ...] = (
    "residency_flows", "residency_sent_bytes", "residency_received_bytes",
    "residency_violations", "residency_exemptions", "residency_tls_handshakes",
    "residency_flows_located", "residency_outbound_bytes", "residency_outbound_sent_bytes",
    "residency_outbound_located_bytes",
    "residency_outbound_classified_bytes", "residency_policy_reloads")


def _family(name: str) -> Any:
    """An empty family of the spec's type (Any: their add_metric signatures differ)."""
    spec = _SPECS[name]
    labels = list(spec.labels)
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.doc, labels=labels)
    if spec.kind == "gauge":
        return GaugeMetricFamily(name, spec.doc, labels=labels)
    if spec.kind == "histogram":
        return HistogramMetricFamily(name, spec.doc, labels=labels)
    return InfoMetricFamily(name, spec.doc, labels=[])


# --------------------------------------------------------------------------------------------
# Bounded label values
# --------------------------------------------------------------------------------------------

def _verdict(rec: FlowRecord) -> str:
    return rec.verdict if rec.verdict in VERDICTS else NO_VERDICT


def _country(code: str | None) -> str:
    if code is None:
        return UNLOCATED
    return code if len(code) == 2 and code.isascii() and code.isalpha() else OTHER


def _zone(name: str | None) -> str:
    # Zone names are validated by the policy loader (at most 64 characters, configured).
    return name if name else NO_ZONE


def _rule(name: str) -> str:
    return name if name in RULES else OTHER


def _tls_version(name: str) -> str:
    if name in _TLS_VERSIONS:
        return name
    return "TLS 1.3 draft" if name.startswith("TLS 1.3 draft") else OTHER


def _short(text: str) -> str:
    return text if len(text) <= _MAX_LABEL_LEN else text[:_MAX_LABEL_LEN]


def geo_source_name(kind: str, database_type: str | None) -> str:
    """The ``source`` label of a geolocation database: bounded, path-free, recognisable."""
    head = _GEO_SOURCE_OF_KIND.get(kind, OTHER)
    if kind == "rir":
        return "rir:iptocc"       # database_type carries the iptocc version: not a new source
    return _short(f"{head}:{database_type}" if database_type else head)


# --------------------------------------------------------------------------------------------
# In-process tallies, updated per flow event under one short lock
# --------------------------------------------------------------------------------------------

class _Histogram:
    """Bucket counts and sum; cumulated only when rendered."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)   # last: above the highest bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds + (math.inf,), self.counts, strict=True):
            running += n
            out.append((floatToGoString(bound), running))
        return out, self.sum


@dataclass
class _PolicyState:
    labels: dict[str, str] | None = None
    loaded_at: float | None = None
    last_ok: bool | None = None


@dataclass
class _Tallies:
    counters: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    pending: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    detection: _Histogram = field(default_factory=lambda: _Histogram(DETECTION_BUCKETS))
    delivery: _Histogram = field(default_factory=lambda: _Histogram(ALERT_DELIVERY_BUCKETS))
    policy: _PolicyState = field(default_factory=_PolicyState)

    def add(self, name: str, labels: tuple[str, ...], value: float = 1) -> None:
        series = self.counters.setdefault(name, {})
        series[labels] = series.get(labels, 0) + value


def _flow_key(rec: FlowRecord) -> tuple:
    """Identifies one flow across its interim and final records (never exported)."""
    return (rec.transport, rec.client_ip, rec.client_port, rec.server_ip, rec.server_port,
            rec.icmp_id, rec.ts_start)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

class Metrics:
    """The monitor's instrumentation, registered as one collector on ``registry``.

    Event methods are safe to call from several capture threads; the
    collector runs in the HTTP server's thread and only copies tallies.
    """

    def __init__(self, registry: CollectorRegistry, *, build_version: str,
                 clock: Callable[[], float] = time.time):
        """``clock`` is the wall clock, for database ages and reload times (tests pin it)."""
        self._lock = threading.Lock()
        self._t = _Tallies()
        self._build = {"version": build_version, "python": platform.python_version()}
        self._engine: Any = None
        self._capture_stats: Callable[[], Mapping[str, tuple[int, int]]] | None = None
        self._geo: Any = None
        self._alerts: Any = None
        self._audit: Any = None
        self._clock = clock
        self._prefill()
        registry.register(_Collector(self))

    def _prefill(self) -> None:
        """Series known in advance start at 0, so rate() and absent() work from the start."""
        for v in VERDICTS:
            for name in ("residency_flows", "residency_sent_bytes", "residency_received_bytes"):
                self._t.add(name, (v,), 0)
        for result in ("success", "failure"):
            self._t.add("residency_policy_reloads", (result,), 0)
        for name in ("residency_outbound_bytes", "residency_outbound_located_bytes",
                     "residency_outbound_classified_bytes"):
            self._t.add(name, (), 0)

    # -- flow events -------------------------------------------------------------------------

    def observe_record(self, rec: FlowRecord) -> None:
        """Account one flow record: bytes from interim ones, everything from the final one."""
        with self._lock:
            sent, received = self._new_bytes(rec)
            self._account_bytes(rec, sent, received)
            if rec.final:
                self._account_flow(rec)

    def _new_bytes(self, rec: FlowRecord) -> tuple[int, int]:
        """Bytes not yet counted for this flow (interim counters are cumulative)."""
        key = _flow_key(rec)
        pending = self._t.pending
        seen_out, seen_in = pending.pop(key, (0, 0)) if rec.final else pending.get(key, (0, 0))
        if not rec.final:
            if key not in pending and len(pending) >= MAX_PENDING_INTERIM:
                return 0, 0           # its final record will count every byte
            pending[key] = (rec.bytes_out, rec.bytes_in)
        return max(0, rec.bytes_out - seen_out), max(0, rec.bytes_in - seen_in)

    def _account_bytes(self, rec: FlowRecord, sent: int, received: int) -> None:
        t, verdict = self._t, _verdict(rec)
        t.add("residency_sent_bytes", (verdict,), sent)
        t.add("residency_received_bytes", (verdict,), received)
        if verdict in (NO_VERDICT, "not_evaluated"):
            return
        total = sent + received
        t.add("residency_outbound_bytes", (), total)
        t.add("residency_outbound_sent_bytes", (_zone(rec.zone), _country(rec.dst_country)), sent)
        if rec.dst_country is not None:
            t.add("residency_outbound_located_bytes", (), total)
            # flow export (rec.source) shows no handshake: located, never classified
            if "no_handshake" not in rec.violations and rec.source == "capture":
                t.add("residency_outbound_classified_bytes", (), total)

    def _account_flow(self, rec: FlowRecord) -> None:
        t, verdict = self._t, _verdict(rec)
        t.add("residency_flows", (verdict,))
        country, zone = _country(rec.dst_country), _zone(rec.zone)
        for rule in rec.violations:
            t.add("residency_violations", (_rule(rule), zone, country))
        if verdict == "exempt":
            t.add("residency_exemptions", (zone, country))
        if rec.tls_version:
            t.add("residency_tls_handshakes", (_tls_version(rec.tls_version),))
        if verdict not in (NO_VERDICT, "not_evaluated") and rec.dst_country is not None:
            source = rec.dst_country_source
            t.add("residency_flows_located", (source if source in _LOCATING_SOURCES else OTHER,))

    def observe_verdict(self, detection_latency_s: float) -> None:
        """A live verdict was reached this long after the flow's first packet."""
        with self._lock:
            self._t.detection.observe(max(0.0, detection_latency_s))

    def observe_alert_delivered(self, seconds: float) -> None:
        """An alert was accepted by Alertmanager this long after its verdict."""
        with self._lock:
            self._t.delivery.observe(max(0.0, seconds))

    def policy_loaded(self, policy: Any, result: str, *, now: float | None = None) -> None:
        """A policy (re)load finished; on failure the policy in force stays as it was."""
        if result not in ("success", "failure"):
            raise ValueError(f"result must be 'success' or 'failure', not {result!r}")
        ok = result == "success"
        with self._lock:
            self._t.add("residency_policy_reloads", (result,))
            self._t.policy.last_ok = ok
            if ok and policy is not None:
                self._t.policy.labels = _policy_labels(policy)
                self._t.policy.loaded_at = self._clock() if now is None else now

    # -- sources read at scrape time ---------------------------------------------------------

    def attach(self, *, engine: Any = None,
               capture_stats: Callable[[], Mapping[str, tuple[int, int]]] | None = None,
               geo: Any = None, alerts: Any = None, audit: Any = None) -> None:
        """Sources the collector reads at scrape time; a source not given stays as it was.

        ``capture_stats()`` must return cumulative ``{interface: (packets, drops)}``:
        the kernel's PACKET_STATISTICS reset on every read, so the capture
        driver adds them up. ``alerts.stats()`` returns ``{"sent": int, "failed":
        {reason: int} (or an int), "queued": int, "dropped": int, "retries": int}``.
        ``audit.stats()`` returns ``{"records": {type: int}, "write_errors": int,
        "last_write": float | None}``.
        """
        if engine is not None:
            self._engine = engine
        if capture_stats is not None:
            self._capture_stats = capture_stats
        if geo is not None:
            self._geo = geo
        if alerts is not None:
            self._alerts = alerts
        if audit is not None:
            self._audit = audit

    def landing(self) -> dict[str, str]:
        """What the exporter's landing page shows: version and the policy in force."""
        with self._lock:
            labels = self._t.policy.labels
        out = {"version": self._build["version"]}
        if labels:
            out.update({"policy": labels["name"], "policy sha256": labels["sha256"],
                        "policy as of": labels["as_of"]})
        return out

    # -- the collector's view ----------------------------------------------------------------

    def _snapshot(self) -> tuple[dict[str, dict[tuple[str, ...], float]], tuple, tuple,
                                 _PolicyState]:
        with self._lock:
            counters = {name: dict(series) for name, series in self._t.counters.items()}
            det, dlv = self._t.detection.snapshot(), self._t.delivery.snapshot()
            p = self._t.policy
            policy = _PolicyState(dict(p.labels) if p.labels else None, p.loaded_at, p.last_ok)
        return counters, det, dlv, policy


def _policy_labels(policy: Any) -> dict[str, str]:
    as_of = policy.as_of
    return {"name": str(policy.name), "sha256": str(policy.sha256),
            "as_of": as_of.isoformat() if hasattr(as_of, "isoformat") else str(as_of)}


def _stable(read: Callable[[], Any]) -> Any:
    """Copy a mapping another thread may be growing; a resize mid-copy is retried."""
    for _ in range(5):
        try:
            return read()
        except RuntimeError:       # "dictionary changed size during iteration"
            continue
    return read()


class _Collector(Collector):
    """Renders tallies and live sources; a failing source is logged and left out."""

    def __init__(self, metrics: Metrics):
        self._m = metrics

    def describe(self) -> Iterator[Metric]:
        for name in _SPECS:
            yield _family(name)

    def collect(self) -> Iterator[Metric]:
        yield from self._tallies()
        m = self._m
        for source, render in (("engine", self._engine), ("capture", self._capture),
                               ("geo", self._geo), ("alerts", self._alerts),
                               ("audit", self._audit_log)):
            try:
                families = list(render())
            except Exception:   # a broken source must not fail the whole scrape
                log.exception("metrics: reading %s failed; its series are left out", source)
                continue
            yield from families
        info = _family("residency_build")
        info.add_metric([], m._build)
        yield info

    # -- tallies

    def _tallies(self) -> Iterator[Metric]:
        counters, det, dlv, policy = self._m._snapshot()
        for name in _TALLY_COUNTERS:   # empty families too: HELP and TYPE say what will come
            fam = _family(name)
            for labels, value in sorted(counters.get(name, {}).items()):
                fam.add_metric(list(labels), value)
            yield fam
        out = counters["residency_outbound_bytes"][()]
        classified = counters["residency_outbound_classified_bytes"][()]
        ratio = _family("residency_visibility_ratio")
        ratio.add_metric([], classified / out if out else math.nan)
        yield ratio
        for name, (buckets, total) in (("residency_detection_latency_seconds", det),
                                       ("residency_alert_delivery_seconds", dlv)):
            hist = _family(name)
            hist.add_metric([], buckets, total)
            yield hist
        yield from _policy_families(policy)

    # -- live sources

    def _engine(self) -> Iterator[Metric]:
        eng = self._m._engine
        if eng is None:
            return
        yield _single("residency_active_flows", eng.table.count)
        yield _single("residency_packets_processed", eng.packets)
        bad = {k: 0 for k in (*KIND_NAMES.values(), "other")}
        bad.update(_stable(lambda: dict(eng.bad)))
        yield _labelled("residency_packets_malformed", bad)
        errors = {"tls": 0, "quic": 0, "dns": 0}
        if eng.inspection is not None:
            errors.update(_stable(lambda: dict(eng.inspection.errors)))
        yield _labelled("residency_handshake_errors", errors)
        yield _single("residency_flows_evicted", eng.table.stats.get("flows_evicted", 0))
        yield from _bounds(eng)

    def _capture(self) -> Iterator[Metric]:
        read = self._m._capture_stats
        if read is None:
            return
        stats = dict(read())
        yield _labelled("residency_packets_captured", {i: s[0] for i, s in stats.items()})
        yield _labelled("residency_packets_dropped", {i: s[1] for i, s in stats.items()})

    def _geo(self) -> Iterator[Metric]:
        geo = self._m._geo
        if geo is None:
            return
        build, age = _family("residency_geo_database_build_timestamp_seconds"), \
            _family("residency_geo_database_age_seconds")
        reload_ok, errors = _family("residency_geo_database_last_reload_successful"), \
            _family("residency_geo_lookup_errors")
        for name, st in _named_sources(geo.status(self._m._clock())):
            if st.build_epoch is not None:
                build.add_metric([name], float(st.build_epoch))
            if st.age_seconds is not None:
                age.add_metric([name], float(st.age_seconds))
            reload_ok.add_metric([name], 0.0 if st.error else 1.0)
            errors.add_metric([name], float(st.lookup_errors))
        yield from (build, age, reload_ok, errors)

    def _alerts(self) -> Iterator[Metric]:
        alerts = self._m._alerts
        if alerts is None:
            return
        stats = alerts.stats()
        for key, name in (("sent", "residency_alerts_sent"),
                          ("dropped", "residency_alerts_dropped"),
                          ("evicted", "residency_alerts_evicted"),
                          ("retries", "residency_alert_retries")):
            if key in stats:
                yield _single(name, stats[key])
        if "queued" in stats:
            yield _single("residency_alerts_queued", stats["queued"])
        failed = stats.get("failed")
        if isinstance(failed, Mapping):
            yield _labelled("residency_alerts_failed",
                            {_short(str(k)): v for k, v in failed.items()})
        elif failed is not None:
            yield _labelled("residency_alerts_failed", {OTHER: failed})


    def _audit_log(self) -> Iterator[Metric]:
        """Served without an audit log too (empty): the series exist whenever it is on."""
        audit = self._m._audit
        stats = audit.stats() if audit is not None else {}
        yield _labelled("residency_audit_records", stats.get("records", {}))
        errors = _family("residency_audit_write_errors")
        if audit is not None:
            errors.add_metric([], float(stats.get("write_errors", 0)))
        yield errors
        last = _family("residency_audit_last_write_timestamp_seconds")
        if stats.get("last_write") is not None:
            last.add_metric([], float(stats["last_write"]))
        yield last


def _bounds(eng: Any) -> Iterator[Metric]:
    """What a flood fills, and what was given up at each bound (engine.py, inspect.py)."""
    headers = dict.fromkeys(MALFORMED_PROTOCOLS, 0)
    headers.update(_stable(lambda: dict(eng.bad_protocol)))
    yield _labelled("residency_malformed_headers", headers)
    insp = eng.inspection
    yield _single("residency_handshake_buffers_dropped",
                  insp.budget.dropped if insp is not None else 0)
    yield _single("residency_datagrams_dropped", eng.table.stats.get("datagrams_dropped", 0))
    names = insp.names.stats if insp is not None else {"evicted": 0, "entries": 0}
    yield _single("residency_dns_addresses_evicted", names["evicted"])
    yield _labelled("residency_reassembly_bytes",
                    {"handshake": insp.budget.held if insp is not None else 0,
                     "datagram": eng.table.reassembly_bytes})
    yield _single("residency_dns_addresses", names["entries"])


def _policy_families(policy: _PolicyState) -> Iterable[Metric]:
    out: list[Metric] = []
    if policy.labels is not None:
        info = _family("residency_policy")
        info.add_metric([], policy.labels)
        out.append(info)
    if policy.last_ok is not None:
        out.append(_single("residency_policy_last_reload_successful", 1 if policy.last_ok else 0))
    if policy.loaded_at is not None:
        out.append(_single("residency_policy_last_reload_timestamp_seconds", policy.loaded_at))
    return out


def _named_sources(statuses: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    """Each geolocation source with a unique label value (two files of one type get #2)."""
    seen: dict[str, int] = {}
    for st in statuses:
        name = geo_source_name(st.kind, st.database_type)
        seen[name] = seen.get(name, 0) + 1
        yield (name if seen[name] == 1 else f"{name}#{seen[name]}"), st


def _single(name: str, value: float) -> Metric:
    """A family with one label-less sample (its type comes from the spec table)."""
    fam = _family(name)
    fam.add_metric([], float(value))
    return fam


def _labelled(name: str, values: Mapping[str, float]) -> Metric:
    fam = _family(name)
    for label, value in sorted(values.items()):
        fam.add_metric([str(label)], float(value))
    return fam
