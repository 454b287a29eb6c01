"""The daemon's configuration file (YAML), validated with every error's file, line and key.

Every key is optional: an empty file (or none at all) runs the monitor on
its embedded defaults: the interface of the default route, the Macau policy,
the registry geolocation data, metrics on 127.0.0.1:8749, no Alertmanager.
The format is documented in ``configs/residency-monitor.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .audit import AuditConfig
from .flows import FlowConfig
from .geo import GeoConfig
from .networks import DEFAULT_INTERNAL
from .yamlcheck import ConfigError, Issue, NodeReader, compose, join_path

DEFAULT_METRICS_PORT = 8749
DEFAULT_FILTER = "ip or ip6 or (vlan and (ip or ip6))"


@dataclass(frozen=True)
class CaptureSettings:
    interfaces: tuple[str, ...] = ()          # empty: the default route's interface
    bpf: str = DEFAULT_FILTER
    rcvbuf_bytes: int = 64 << 20
    promiscuous: bool = False
    netns: str | None = None                   # capture on interfaces of this network namespace
    workers: int = 1                           # capture processes joined by PACKET_FANOUT
    mode: str = "full"                         # full | handshake (only what decides verdicts)
    read_path: str = "ring"                    # ring (TPACKET_V3) | socket (recvmsg)
    ring_block_bytes: int = 1 << 20
    ring_blocks: int | None = None             # None: rcvbuf_bytes // ring_block_bytes
    ring_block_timeout_ms: int = 10


@dataclass(frozen=True)
class MetricsSettings:
    listen_address: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    client_ca_file: str | None = None
    # exporter-toolkit web config (TLS, basic auth, headers, rate limit); excludes tls_*
    web_config_file: str | None = None


@dataclass(frozen=True)
class AlertmanagerSettings:
    urls: tuple[str, ...] = ()
    queue_size: int = 10000
    max_alerts: int = 50_000
    resend_interval: float = 60.0
    resolve_after: float = 300.0
    timeout: float = 5.0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    bearer_token_file: str | None = None
    basic_auth_username: str | None = None
    basic_auth_password_file: str | None = None
    labels: tuple[tuple[str, str], ...] = ()   # static labels on every alert (site, instance)


@dataclass(frozen=True)
class Config:
    source: str = "<defaults>"
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    internal_networks: tuple[str, ...] = DEFAULT_INTERNAL
    flows: FlowConfig = field(default_factory=FlowConfig)
    policy: str | None = None                  # None: the embedded Macau pack
    geo: GeoConfig = field(default_factory=GeoConfig)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    alertmanager: AlertmanagerSettings = field(default_factory=AlertmanagerSettings)
    records: str | None = None                 # append final flow records here (JSON Lines)
    audit: AuditConfig = field(default_factory=AuditConfig)
    log_format: str = "auto"                   # auto (json when not a terminal) | json | text
    log_level: str = "info"
    user: str | None = None                    # started as root: switch to this user after open
    # flow export listeners (ipfix://HOST:PORT, netflow://HOST:PORT; see collector.py): with
    # any, packets are captured only on the interfaces named in capture.interfaces
    sources: tuple[str, ...] = ()


_TOP = ((), ("capture", "internal_networks", "flows", "policy", "geo", "metrics",
             "alertmanager", "records", "log", "audit", "user", "sources"))
_CAPTURE = ((), ("interfaces", "bpf", "rcvbuf_bytes", "promiscuous", "netns", "workers", "mode",
                 "read_path", "ring_block_bytes", "ring_blocks", "ring_block_timeout_ms"))
_FLOWS = ((), ("tcp_idle", "tcp_closed", "udp_idle", "active_timeout", "max_flows",
               "reassembly_bytes_per_flow", "reassembly_bytes_total", "datagram_bytes_total",
               "dns_max_addresses"))
_GEO = ((), ("databases", "asn_databases", "overrides", "embedded", "reload_check_seconds"))
_OVERRIDE = (("network", "country"), ("label",))
_METRICS = ((), ("listen_address", "port", "tls_cert_file", "tls_key_file", "client_ca_file",
                 "web_config_file"))
_AM = ((), ("urls", "queue_size", "max_alerts", "resend_interval", "resolve_after", "timeout",
            "ca_file", "cert_file", "key_file", "bearer_token_file", "basic_auth", "labels"))
_BASIC = (("username", "password_file"), ())
_LOG = ((), ("format", "level"))
_AUDIT = ((), ("enabled", "path", "all_flows", "fsync_interval", "rotate_bytes", "rotate_daily",
               "compress", "retention_days", "checkpoint_interval", "pseudonymize_key_file"))


class _Reader(NodeReader):
    """Value kinds of the daemon's configuration."""

    def strings(self, node: yaml.Node, path: str) -> tuple[str, ...] | None:
        values = self.items(node, path, self.text)
        return tuple(values) if values is not None else None

    def networks(self, node: yaml.Node, path: str) -> tuple[str, ...] | None:
        values = self.items(node, path, self.network, nonempty=True)
        return tuple(values) if values is not None else None

    def integer(self, node: yaml.Node, path: str, low: int, high: int) -> int | None:
        value = self.number(node, path, low, high)
        if value is not None and value != int(value):
            self.error(node, path, "expected a whole number")
            return None
        return int(value) if value is not None else None

    def flow_source(self, node: yaml.Node, path: str) -> str | None:
        from .collector import parse_source

        value = self.text(node, path)
        if value is None:
            return None
        try:
            return parse_source(value).url
        except ValueError as exc:
            self.error(node, path, str(exc))
            return None

    def url(self, node: yaml.Node, path: str) -> str | None:
        value = self.text(node, path)
        if value is not None and not value.startswith(("http://", "https://")):
            self.error(node, path, f"expected an http:// or https:// URL, got {value!r}")
            return None
        return value.rstrip("/") if value is not None else None


def _section(r: _Reader, top: dict, name: str, keys) -> dict[str, yaml.Node]:
    return (r.mapping(top[name], name, keys) or {}) if name in top else {}


def _get(r: _Reader, m: dict, path: str, key: str, read, default):
    if key not in m:
        return default
    value = read(m[key], join_path(path, key))
    return default if value is None else value


def _capture(r: _Reader, top: dict) -> CaptureSettings:
    m = _section(r, top, "capture", _CAPTURE)
    d = CaptureSettings()

    def whole(key: str, default: int | None, low: int, high: int) -> int | None:
        return _get(r, m, "capture", key, lambda n, p: r.integer(n, p, low, high), default)

    block = whole("ring_block_bytes", d.ring_block_bytes, 128 << 10, 1 << 30)
    if block is not None and block & (block - 1):
        r.error(m["ring_block_bytes"], "capture.ring_block_bytes",
                f"expected a power of two (131072, 262144 ... 1048576), got {block}")
    mode = _get(r, m, "capture", "mode", lambda n, p: r.choice(n, p, ("full", "handshake")),
                d.mode)
    if mode == "handshake" and "bpf" in m:
        r.error(m["bpf"], "capture.bpf", "not with mode: handshake (its own kernel filter "
                                         "replaces this one)")
    return CaptureSettings(
        interfaces=_get(r, m, "capture", "interfaces", r.strings, d.interfaces),
        bpf=_get(r, m, "capture", "bpf", r.text, d.bpf),
        rcvbuf_bytes=_get(r, m, "capture", "rcvbuf_bytes",
                          lambda n, p: r.integer(n, p, 1 << 16, 1 << 31), d.rcvbuf_bytes),
        promiscuous=_get(r, m, "capture", "promiscuous", r.boolean, d.promiscuous),
        netns=_get(r, m, "capture", "netns", r.text, None),
        workers=whole("workers", d.workers, 1, 64) or d.workers, mode=mode,
        read_path=_get(r, m, "capture", "read_path",
                       lambda n, p: r.choice(n, p, ("ring", "socket")), d.read_path),
        ring_block_bytes=block or d.ring_block_bytes,
        ring_blocks=whole("ring_blocks", None, 2, 1 << 20),
        ring_block_timeout_ms=whole("ring_block_timeout_ms", d.ring_block_timeout_ms, 1,
                                    10_000) or d.ring_block_timeout_ms)


def _flows(r: _Reader, top: dict) -> FlowConfig:
    m = _section(r, top, "flows", _FLOWS)
    d = FlowConfig()

    def seconds(key: str, default: float, low: float = 1.0) -> float:
        return _get(r, m, "flows", key, lambda n, p: r.number(n, p, low, 86400 * 7), default)

    def whole(key: str, default: int, low: int, high: int) -> int:
        return _get(r, m, "flows", key, lambda n, p: r.integer(n, p, low, high), default)

    udp = seconds("udp_idle", d.udp_idle)
    per_flow = whole("reassembly_bytes_per_flow", d.reassembly_bytes_per_flow, 2 << 10, 16 << 20)
    total = whole("reassembly_bytes_total", d.reassembly_bytes_total, 64 << 10, 64 << 30)
    if total < per_flow and "reassembly_bytes_total" in m:
        r.error(m["reassembly_bytes_total"], "flows.reassembly_bytes_total",
                f"smaller than reassembly_bytes_per_flow ({per_flow}): no handshake would fit")
    return FlowConfig(
        tcp_idle=seconds("tcp_idle", d.tcp_idle), tcp_closed=seconds("tcp_closed", d.tcp_closed, 0),
        udp_idle=udp, other_idle=udp, active=seconds("active_timeout", d.active),
        max_flows=whole("max_flows", d.max_flows, 1, 100_000_000),
        reassembly_bytes_per_flow=per_flow, reassembly_bytes_total=total,
        max_reassembly_bytes=whole("datagram_bytes_total", d.max_reassembly_bytes,
                                   64 << 10, 64 << 30),
        dns_max_addresses=whole("dns_max_addresses", d.dns_max_addresses, 1, 100_000_000))


def _geo(r: _Reader, top: dict) -> GeoConfig:
    m = _section(r, top, "geo", _GEO)
    d = GeoConfig()
    overrides: list[tuple[str, str, str | None]] = []
    for i, node in enumerate(r.seq(m["overrides"], "geo.overrides") or [] if "overrides" in m
                             else []):
        path = f"geo.overrides[{i}]"
        o = r.mapping(node, path, _OVERRIDE) or {}
        net = r.network(o["network"], path + ".network") if "network" in o else None
        cc = r.text(o["country"], path + ".country") if "country" in o else None
        if cc is not None and not (len(cc) == 2 and cc.isalpha() and cc.isupper()):
            r.error(o["country"], path + ".country", f"expected an upper-case ISO country "
                                                     f"code such as MO, got {cc!r}")
            cc = None
        label = r.text(o["label"], path + ".label") if "label" in o else None
        if net and cc:
            overrides.append((net, cc, label))
    return GeoConfig(
        databases=_get(r, m, "geo", "databases", r.strings, d.databases),
        asn_databases=_get(r, m, "geo", "asn_databases", r.strings, d.asn_databases),
        overrides=tuple(overrides),
        embedded=_get(r, m, "geo", "embedded", r.boolean, d.embedded),
        reload_check_interval=_get(r, m, "geo", "reload_check_seconds",
                                   lambda n, p: r.number(n, p, 1, 86400),
                                   d.reload_check_interval))


def _metrics(r: _Reader, top: dict) -> MetricsSettings:
    m = _section(r, top, "metrics", _METRICS)
    d = MetricsSettings()
    out = MetricsSettings(
        listen_address=_get(r, m, "metrics", "listen_address", r.text, d.listen_address),
        port=_get(r, m, "metrics", "port", lambda n, p: r.integer(n, p, 0, 65535), d.port),
        tls_cert_file=_get(r, m, "metrics", "tls_cert_file", r.text, None),
        tls_key_file=_get(r, m, "metrics", "tls_key_file", r.text, None),
        client_ca_file=_get(r, m, "metrics", "client_ca_file", r.text, None),
        web_config_file=_get(r, m, "metrics", "web_config_file", r.text, None))
    if bool(out.tls_cert_file) != bool(out.tls_key_file):
        r.error(top.get("metrics"), "metrics", "tls_cert_file and tls_key_file go together")
    if out.web_config_file:
        # Two sources of TLS settings would leave the admin guessing which one serves.
        for key in ("tls_cert_file", "tls_key_file", "client_ca_file"):
            if key in m:
                r.error(m[key], f"metrics.{key}",
                        "not with web_config_file: put TLS in the web config file's "
                        "tls_server_config (cert_file, key_file, client_ca_file)")
    return out


def _alertmanager(r: _Reader, top: dict) -> AlertmanagerSettings:
    m = _section(r, top, "alertmanager", _AM)
    d = AlertmanagerSettings()
    p = "alertmanager"
    urls = _get(r, m, p, "urls", lambda n, q: r.items(n, q, r.url), [])
    basic = r.mapping(m["basic_auth"], p + ".basic_auth", _BASIC) or {} if "basic_auth" in m \
        else {}
    labels = {}
    if "labels" in m:
        for name, (key_node, value) in r.entries(m["labels"], p + ".labels").items():
            text = r.text(value, f"{p}.labels.{name}")
            if not name.isidentifier() or name.startswith("__"):
                r.error(key_node, f"{p}.labels.{name}", "not a valid label name")
            elif text is not None:
                labels[name] = text
    return AlertmanagerSettings(
        urls=tuple(urls),
        queue_size=_get(r, m, p, "queue_size", lambda n, q: r.integer(n, q, 1, 10_000_000),
                        d.queue_size),
        max_alerts=_get(r, m, p, "max_alerts", lambda n, q: r.integer(n, q, 1, 10_000_000),
                        d.max_alerts),
        resend_interval=_get(r, m, p, "resend_interval", lambda n, q: r.number(n, q, 1, 3600),
                             d.resend_interval),
        resolve_after=_get(r, m, p, "resolve_after", lambda n, q: r.number(n, q, 1, 86400),
                           d.resolve_after),
        timeout=_get(r, m, p, "timeout", lambda n, q: r.number(n, q, 0.1, 300), d.timeout),
        ca_file=_get(r, m, p, "ca_file", r.text, None),
        cert_file=_get(r, m, p, "cert_file", r.text, None),
        key_file=_get(r, m, p, "key_file", r.text, None),
        bearer_token_file=_get(r, m, p, "bearer_token_file", r.text, None),
        basic_auth_username=_get(r, basic, p + ".basic_auth", "username", r.text, None),
        basic_auth_password_file=_get(r, basic, p + ".basic_auth", "password_file", r.text,
                                      None),
        labels=tuple(sorted(labels.items())))


def _audit(r: _Reader, top: dict) -> AuditConfig:
    m = _section(r, top, "audit", _AUDIT)
    d = AuditConfig()
    p = "audit"
    return AuditConfig(
        enabled=_get(r, m, p, "enabled", r.boolean, d.enabled),
        path=_get(r, m, p, "path", r.text, d.path),
        all_flows=_get(r, m, p, "all_flows", r.boolean, d.all_flows),
        fsync_interval=_get(r, m, p, "fsync_interval", lambda n, q: r.number(n, q, 0, 3600),
                            d.fsync_interval),
        rotate_bytes=_get(r, m, p, "rotate_bytes", lambda n, q: r.integer(n, q, 1 << 12, 10**12),
                          d.rotate_bytes),
        rotate_daily=_get(r, m, p, "rotate_daily", r.boolean, d.rotate_daily),
        compress=_get(r, m, p, "compress", r.boolean, d.compress),
        retention_days=_get(r, m, p, "retention_days", lambda n, q: r.integer(n, q, 0, 36600),
                            d.retention_days),
        checkpoint_interval=_get(r, m, p, "checkpoint_interval",
                                 lambda n, q: r.number(n, q, 0, 86400 * 7),
                                 d.checkpoint_interval),
        pseudonymize_key_file=_get(r, m, p, "pseudonymize_key_file", r.text, None))


def _build(r: _Reader, root: yaml.Node | None, source: str) -> Config:
    top = (r.mapping(root, "", _TOP) or {}) if root is not None else {}
    log = _section(r, top, "log", _LOG)
    capture = _capture(r, top)
    flows = _flows(r, top)
    return Config(
        source=source, capture=capture,
        internal_networks=_get(r, top, "", "internal_networks", r.networks, DEFAULT_INTERNAL),
        flows=replace(flows, seq_bytes=True) if capture.mode == "handshake" else flows,
        policy=_get(r, top, "", "policy", r.text, None),
        geo=_geo(r, top), metrics=_metrics(r, top), alertmanager=_alertmanager(r, top),
        records=_get(r, top, "", "records", r.text, None),
        audit=_audit(r, top),
        log_format=_get(r, log, "log", "format",
                        lambda n, p: r.choice(n, p, ("auto", "json", "text")), "auto"),
        log_level=_get(r, log, "log", "level",
                       lambda n, p: r.choice(n, p, ("debug", "info", "warning", "error")),
                       "info"),
        user=_get(r, top, "", "user", r.text, None),
        sources=_get(r, top, "", "sources", lambda n, p: _tuple(r.items(n, p, r.flow_source)), ()))


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values is not None else None


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate a configuration document; raises ConfigError listing every problem."""
    r = _Reader(source)
    root = compose(r, text, "") if text.strip() else None
    r.issues = [i for i in r.issues if not i.message.startswith("empty file")]
    config = _build(r, root, source)
    if r.issues:
        raise ConfigError(sorted(r.issues, key=lambda i: i.line))
    return config


def load_config(path: str | Path | None) -> Config:
    """The configuration at ``path``, or the defaults when ``path`` is None."""
    if path is None:
        return Config()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Issue(str(path), 0, "", f"cannot read: {exc}")]) from None
    return parse_config(text, str(path))
