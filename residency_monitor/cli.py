"""The ``residency-monitor`` command line: builds configuration, then calls a driver."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from . import __version__
from .engine import Engine, EngineConfig
from .flows import FlowConfig
from .geo import GeoConfig, GeoError, Geolocator, existing_default_databases
from .networks import NetworkSet
from .output import TableWriter, summary_lines
from .policy import FlowFacts, Policy, PolicyError, default_policy, explain, load_policy, zone_of
from .records import FlowRecord
from .replay import replay, stderr_progress
from .residency import Residency
from .sample import SAMPLE_PATH
from .summary import ComplianceSummary

EXIT_CONFIG = 2  # a bad policy, geo database or option: refused before any work


class Refused(click.ClickException):
    """A configuration error found before any work: exit 2, like a usage error."""

    exit_code = EXIT_CONFIG


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="residency-monitor")
def main() -> None:
    """Watch where outbound traffic goes, and over which TLS."""


def geo_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options that choose the geolocation sources (shared by several commands)."""
    opts = [
        click.option("--geo-db", "geo_dbs", multiple=True, metavar="MMDB",
                      type=click.Path(dir_okay=False, path_type=Path),
                      help="Country/City database (MaxMind, DB-IP or IPinfo format), repeatable, "
                           "in precedence order. Default: those present in /var/lib/GeoIP and "
                           "/usr/share/GeoIP."),
        click.option("--asn-db", "asn_dbs", multiple=True, metavar="MMDB",
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="ASN/ISP database, repeatable."),
        click.option("--geo-override", "overrides", multiple=True, metavar="CIDR=CC[:LABEL]",
                     help="Locate a network yourself (longest prefix wins over databases)."),
        click.option("--embedded-geo/--no-embedded-geo", default=True, show_default=True,
                     help="Fall back to the RIR registry data shipped with iptocc."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(opts), fn)


def _geolocator(geo_dbs: tuple[Path, ...], asn_dbs: tuple[Path, ...],
                overrides: tuple[str, ...], embedded: bool) -> Geolocator:
    if geo_dbs or asn_dbs:
        dbs, asns = tuple(map(str, geo_dbs)), tuple(map(str, asn_dbs))
    else:
        found = existing_default_databases()
        dbs, asns = found.country, found.asn
    config = GeoConfig(databases=dbs, asn_databases=asns, overrides=_overrides(overrides),
                       embedded=embedded)
    try:
        return Geolocator(config)
    except (GeoError, ValueError) as exc:
        raise Refused(f"geolocation: {exc}") from None


def _overrides(items: tuple[str, ...]) -> tuple[tuple[str, str, str | None], ...]:
    out = []
    for item in items:
        cidr, sep, rest = item.partition("=")
        country, _, label = rest.partition(":")
        if not sep or len(country) != 2 or not country.isalpha():
            raise click.BadParameter(f"{item!r}: expected CIDR=CC[:LABEL]",
                                     param_hint="--geo-override")
        out.append((cidr, country.upper(), label or None))
    return tuple(out)


def _policy(path: Path | None) -> Policy:
    try:
        return load_policy(path) if path is not None else default_policy()
    except PolicyError as exc:
        raise Refused(f"policy refused:\n{exc}") from None


def _networks(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    try:
        NetworkSet(cidrs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--internal") from None
    return cidrs


@main.command("replay")
@click.argument("captures", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="jsonl",
              show_default=True,
              help="JSON Lines (one flow record per line) or a table for people.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write records here instead of standard output.")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Residency policy (YAML). Default: the Macau PDPA pack.")
@geo_options
@click.option("--internal", "internal", multiple=True, metavar="CIDR",
              help="Internal network (repeatable); default: RFC 1918, CGNAT, link-local, ULA, "
                   "loopback.")
@click.option("--interim/--no-interim", default=True, show_default=True,
              help="Emit interim records for flows that outlive the active timeout.")
@click.option("--tcp-idle", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds (packet time) before an idle TCP flow ends.")
@click.option("--tcp-closed", type=click.FloatRange(min=0), default=30, show_default=True,
              help="Seconds a TCP flow is kept after FIN from both sides or RST.")
@click.option("--udp-idle", type=click.FloatRange(min=1), default=60, show_default=True,
              help="Seconds before an idle UDP (or other IP protocol) flow ends.")
@click.option("--active-timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds after which a long flow gets an interim record (and goes on).")
@click.option("--max-flows", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Flows tracked at once; beyond it the longest-idle are evicted.")
@click.option("--quiet", "-q", is_flag=True, help="No summaries on standard error.")
@click.option("--audit", "audit_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also append to the audit log in this directory, as the daemon would "
                   "(verdicts that are not plainly compliant; the chain continues if it "
                   "exists).")
@click.option("--audit-all", is_flag=True, help="With --audit: every flow record, not only "
                                                "verdicts.")
@click.option("--audit-key", "audit_key", type=click.Path(dir_okay=False, path_type=Path),
              help="With --audit: pseudonymise internal addresses with this key file.")
def replay_cmd(captures: tuple[Path, ...], fmt: str, output: Path | None,
               policy_path: Path | None, geo_dbs: tuple[Path, ...], asn_dbs: tuple[Path, ...],
               overrides: tuple[str, ...], embedded_geo: bool, internal: tuple[str, ...],
               interim: bool, tcp_idle: float, tcp_closed: float, udp_idle: float,
               active_timeout: float, max_flows: int, quiet: bool,
               audit_dir: Path | None = None, audit_all: bool = False,
               audit_key: Path | None = None) -> None:
    """Replay pcap/pcapng files (gzip too) into flow records with verdicts.

    With no CAPTURES, replays the sample capture bundled with the package.
    Exit status: 0 done (warnings go to standard error), 2 bad policy,
    database or option, 3 nothing could be read, 4 some capture could not
    be opened (the others were replayed).
    """
    paths = list(captures) or [SAMPLE_PATH]
    config = EngineConfig(flows=FlowConfig(
        tcp_idle=tcp_idle, tcp_closed=tcp_closed, udp_idle=udp_idle, other_idle=udp_idle,
        active=active_timeout, max_flows=max_flows))
    if internal:
        config.internal_networks = _networks(internal)
    policy = _policy(policy_path)
    residency = Residency(policy, _geolocator(geo_dbs, asn_dbs, overrides, embedded_geo),
                          NetworkSet(config.internal_networks))
    compliance = ComplianceSummary(policy_name=policy.name)
    auditor = _replay_auditor(audit_dir, audit_all, audit_key, policy, config.internal_networks,
                              paths) if audit_dir else None
    with ExitStack() as stack:
        out = stack.enter_context(open(output, "w", encoding="utf-8")) if output else sys.stdout
        table = TableWriter(out) if fmt == "table" else None

        def write(rec: FlowRecord) -> None:
            if auditor is not None:
                auditor.record(rec)
            compliance.add(rec)
            if not interim and not rec.final:
                return
            if table is not None:
                table.add(rec)
            else:
                out.write(rec.to_json())
                out.write("\n")

        engine = Engine(config, write, enrich=residency)
        result = replay(paths, write, progress=None if quiet else stderr_progress(),
                        engine=engine)
        if table is not None:
            table.close()
            out.write("\n" + "\n".join(compliance.lines()) + "\n")
    if auditor is not None:
        auditor.stop(packets=result.packets, records=result.records, reason="end_of_capture")
        auditor.log.close()
    if not quiet:
        for line in summary_lines(result):
            click.echo(line, err=True)
        if table is None:
            click.echo("\n".join(compliance.lines()), err=True)
    for msg in result.errors:
        click.echo(f"error: {msg}", err=True)
    sys.exit(result.exit_code)


@main.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file (YAML). Default: embedded defaults.")
@click.option("--interface", "-i", "interfaces", multiple=True, metavar="IFACE",
              help="Capture on this interface (repeatable). Default: the default route's.")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Residency policy (YAML), instead of the configuration's.")
@click.option("--web.listen-address", "listen", metavar="[ADDR]:PORT",
              help="Where /metrics is served (default 127.0.0.1:8749).")
@click.option("--web.config.file", "web_config", metavar="PATH",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Prometheus exporter-toolkit web configuration (TLS, basic auth) for "
                   "/metrics, instead of the configuration's metrics.web_config_file.")
@click.option("--user", "user", metavar="NAME",
              help="Started as root: switch to this user once capture sockets are open "
                   "(the configuration's user:). Every capability is dropped either way.")
@click.option("--source", "sources", multiple=True, metavar="URL",
              help="Collect flow records exported by routers and probes: ipfix://HOST:PORT "
                   "or netflow://HOST:PORT (v5/v9), repeatable, instead of the "
                   "configuration's sources:. With a source, packets are captured only on "
                   "the interfaces named (--interface or capture.interfaces).")
@click.option("--log.format", "log_format", type=click.Choice(["auto", "json", "text"]),
              help="Log format (auto: JSON unless standard error is a terminal).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, metavar="N",
              help="Capture processes joined by PACKET_FANOUT, each with its own flow "
                   "table (the configuration's capture.workers; default 1).")
@click.option("--mode", "capture_mode", type=click.Choice(["full", "handshake"]), default=None,
              help="handshake: a kernel filter passes only what decides verdicts (SYN/FIN/"
                   "RST, TLS handshake records, small pushed segments, QUIC long headers, "
                   "DNS); TCP bytes come from sequence numbers (capture.mode).")
def run_cmd(config_path: Path | None, interfaces: tuple[str, ...], policy_path: Path | None,
            listen: str | None, web_config: Path | None, user: str | None,
            log_format: str | None, sources: tuple[str, ...] = (), workers: int | None = None,
            capture_mode: str | None = None) -> None:
    """Monitor live traffic: verdicts, Prometheus metrics, Alertmanager alerts.

    Exit status: 0 stopped by a signal, 2 configuration error (config,
    policy, geolocation database, metrics address, web config, user), 3
    capture could not start (no such interface, no CAP_NET_RAW), 4 a capture
    interface vanished while running (capabilities are dropped after start,
    so it cannot be reopened: the supervisor restarts the daemon).
    """
    import dataclasses

    from .config import DEFAULT_FILTER, ConfigError, load_config
    from .daemon import Daemon, StartupError, setup_logging

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise Refused(f"configuration refused:\n{exc}") from None
    changes: dict[str, Any] = {}
    capture: dict[str, Any] = {}
    if interfaces:
        capture["interfaces"] = interfaces
    if workers:
        capture["workers"] = workers
    if capture_mode:
        if capture_mode == "handshake" and config.capture.bpf != DEFAULT_FILTER:
            raise Refused(f"--mode handshake: {config.source} sets capture.bpf; the handshake "
                          "mode's kernel filter replaces it")
        capture["mode"] = capture_mode
        changes["flows"] = dataclasses.replace(config.flows,
                                               seq_bytes=capture_mode == "handshake")
    if capture:
        changes["capture"] = dataclasses.replace(config.capture, **capture)
    if policy_path:
        changes["policy"] = str(policy_path)
    if listen:
        changes["metrics"] = _listen(config.metrics, listen)
    if web_config:
        metrics = changes.get("metrics", config.metrics)
        if metrics.tls_cert_file or metrics.client_ca_file:
            raise Refused(f"--web.config.file: {config.source} sets metrics.tls_cert_file or "
                          "client_ca_file; configure TLS in one place (the web config file's "
                          "tls_server_config)")
        changes["metrics"] = dataclasses.replace(metrics, web_config_file=str(web_config))
    if user:
        changes["user"] = user
    if sources:
        changes["sources"] = _sources(sources)
    config = dataclasses.replace(config, **changes)
    setup_logging(log_format or config.log_format, config.log_level)
    policy = _policy(Path(config.policy) if config.policy else None)
    try:
        geo = Geolocator(_with_default_databases(config.geo))
    except (GeoError, ValueError) as exc:
        raise Refused(f"geolocation: {exc}") from None
    try:
        daemon = Daemon(config, policy, geo)
        daemon.start()
    except StartupError as exc:
        click.echo(f"residency-monitor: {exc}", err=True)
        sys.exit(exc.code)
    daemon.install_signals()
    sys.exit(daemon.run())


def _sources(urls: tuple[str, ...]) -> tuple[str, ...]:
    from .collector import parse_source

    try:
        return tuple(parse_source(u).url for u in urls)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--source") from None


def _listen(metrics: Any, listen: str) -> Any:
    import dataclasses

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{listen!r}: expected [ADDR]:PORT",
                                 param_hint="--web.listen-address")
    return dataclasses.replace(metrics, listen_address=host.strip("[]") or "0.0.0.0",
                               port=int(port))


def _with_default_databases(geo: GeoConfig) -> GeoConfig:
    import dataclasses

    if geo.databases or geo.asn_databases:
        return geo
    found = existing_default_databases()
    return dataclasses.replace(geo, databases=found.country, asn_databases=found.asn)


@main.group("policy")
def policy_group() -> None:
    """Check residency policies and see how they judge a destination."""


@policy_group.command("check")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
def policy_check(files: tuple[Path, ...]) -> None:
    """Validate policy files; every error is listed with its file, line and key.

    Exit status 0 when all are valid, 1 otherwise (like promtool check).
    """
    bad = 0
    for path in files:
        try:
            p = load_policy(path)
        except PolicyError as exc:
            bad += 1
            click.echo(str(exc), err=True)
            click.echo(f"{path}: REFUSED ({len(exc.errors)} error(s))", err=True)
            continue
        click.echo(f"{path}: OK: {p.name} (as of {p.as_of.isoformat()}), {len(p.zones)} zone(s), "
                   f"{len(p.exceptions)} exception(s), sha256 {p.sha256}")
    sys.exit(1 if bad else 0)


@policy_group.command("explain")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Residency policy (YAML). Default: the Macau PDPA pack.")
@click.argument("ip")
@click.option("--sni", help="Server name the client asked for (TLS SNI).")
@click.option("--zone", "zone_name", help="Judge as if sent from this zone.")
@click.option("--client", "client_ip", help="Internal client address (instead of --zone).")
@click.option("--port", type=click.IntRange(0, 65535), default=443, show_default=True)
@click.option("--app", default="tls", show_default=True,
              help="Application protocol: tls, quic, http, smtp, dns, unknown ...")
@click.option("--tls-version", default="TLS 1.3", show_default=True,
              help='Negotiated version, e.g. "TLS 1.2", or "none" for no handshake seen.')
@click.option("--at", "at", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Judge at this (UTC) time; exception expiry depends on it. Default: now.")
@geo_options
def policy_explain(policy_path: Path | None, ip: str, sni: str | None, zone_name: str | None,
                   client_ip: str | None, port: int, app: str, tls_version: str, at: Any,
                   geo_dbs: tuple[Path, ...], asn_dbs: tuple[Path, ...],
                   overrides: tuple[str, ...], embedded_geo: bool) -> None:
    """Print the decision for a destination IP and the rule that made it."""
    import datetime as dt
    import time

    from .policy import tls_version_code

    policy = _policy(policy_path)
    client = client_ip or _zone_address(policy, zone_name)
    located = _geolocator(geo_dbs, asn_dbs, overrides, embedded_geo).lookup_str(ip)
    version = None if tls_version.lower() == "none" else tls_version_code(tls_version)
    if version is None and tls_version.lower() != "none":
        raise click.BadParameter(f"unknown TLS version {tls_version!r}",
                                 param_hint="--tls-version")
    ts = at.replace(tzinfo=dt.timezone.utc).timestamp() if at else time.time()
    facts = FlowFacts(
        client_ip=client, server_ip=ip, server_port=port,
        transport="udp" if app == "quic" else "tcp", app=app, direction="outbound", ts=ts,
        tls_version=version, encrypted=app in ("tls", "quic", "ssh") and version is not None,
        payload=True, sni=sni, country=located.country, country_source=located.source,
        asn=located.asn)
    where = located.country or "unlocated"
    click.echo(f"destination {ip}: {where} (source {located.source}, basis {located.basis}"
               + (f", AS{located.asn} {located.as_org}" if located.asn else "") + ")")
    click.echo(explain(facts, policy))


def _zone_address(policy: Policy, zone_name: str | None) -> str:
    """An address inside the named zone (its first network's first host)."""
    import ipaddress

    if zone_name is None:
        return "192.168.0.1"
    for zone in policy.zones:
        if zone.name == zone_name:
            net = ipaddress.ip_network(zone.networks[0])
            return str(net.network_address + (1 if net.num_addresses > 1 else 0))
    if zone_name == policy.default_zone.name:
        return "192.168.0.1" if zone_of("192.168.0.1", policy).name == zone_name else "10.0.0.1"
    names = ", ".join([z.name for z in policy.zones] + [policy.default_zone.name])
    raise click.BadParameter(f"no zone {zone_name!r} in {policy.name} (zones: {names})",
                             param_hint="--zone")


@main.group("geo")
def geo_group() -> None:
    """Geolocation sources."""


@geo_group.command("lookup")
@click.argument("ips", nargs=-1, required=True)
@geo_options
def geo_lookup(ips: tuple[str, ...], geo_dbs: tuple[Path, ...], asn_dbs: tuple[Path, ...],
               overrides: tuple[str, ...], embedded_geo: bool) -> None:
    """Show what every configured source says about each address."""
    geo = _geolocator(geo_dbs, asn_dbs, overrides, embedded_geo)
    for ip in ips:
        try:
            result = geo.lookup_str(ip)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="IPS") from None
        click.echo(f"{ip}: {result.country or 'unlocated'} (source {result.source}, "
                   f"basis {result.basis})")
        for source, says in geo.explain(ip):
            click.echo(f"  {source}: {says}")


@geo_group.command("status")
@geo_options
def geo_status(geo_dbs: tuple[Path, ...], asn_dbs: tuple[Path, ...], overrides: tuple[str, ...],
               embedded_geo: bool) -> None:
    """List the geolocation sources in use, with their build date and age."""
    import datetime as dt
    import time

    geo = _geolocator(geo_dbs, asn_dbs, overrides, embedded_geo)
    for st in geo.status(time.time()):
        built = (dt.datetime.fromtimestamp(st.build_epoch, dt.timezone.utc).strftime("%Y-%m-%d")
                 if st.build_epoch else "-")
        age = f"{st.age_seconds / 86400:.1f} days" if st.age_seconds is not None else "-"
        click.echo(f"{st.name}: kind {st.kind}, type {st.database_type or '-'}, built {built}, "
                   f"age {age}" + (f", ERROR {st.error}" if st.error else ""))
    if overrides:
        click.echo(f"overrides: {len(overrides)} network(s)")


@main.command("report")
@click.argument("inputs", nargs=-1, required=True, metavar="AUDIT_PATH...",
                type=click.Path(exists=True, path_type=Path))
@click.option("--from", "date_from", metavar="DATE",
              help="Start (UTC): YYYY-MM-DD or an ISO time. Default: the first flow.")
@click.option("--to", "date_to", metavar="DATE",
              help="End (UTC): YYYY-MM-DD includes that day; an ISO time is exclusive. "
                   "Default: the last flow.")
@click.option("--format", "fmt", type=click.Choice(["html", "json", "csv"]), default="html",
              show_default=True, help="One self-contained HTML page, the model as JSON, or CSV.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write the report here instead of standard output.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Destinations listed per violation rule.")
def report_cmd(inputs: tuple[Path, ...], date_from: str | None, date_to: str | None, fmt: str,
               output: Path | None, top: int) -> None:
    """Evidence report from audit logs (directories or segments) or replay records.

    Data-flow map, violations over time and their top destinations, TLS
    versions, exceptions used and expired, visibility, detection latency and
    the policy versions in force. A flow is counted once (interim records give
    way to its final one). Each line is read as an audit entry or a flow
    record; a partial last line is skipped and said.

    \b
    CSV: one table with columns
      section,key,subkey,item,flows,bytes_out,bytes_in,first_seen,last_seen,value
    (one row per figure; the section says what key, subkey and item hold).

    Exit status: 0 written, 2 bad option or unreadable input (file:line
    named), 3 no flow records in the period.
    """
    from . import report as rpt
    from .report_html import render_html

    bounds = []
    for value, name, end in ((date_from, "--from", False), (date_to, "--to", True)):
        try:
            bounds.append(rpt.parse_bound(value, end) if value else None)
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected YYYY-MM-DD or an ISO time",
                                     param_hint=name) from None
    try:
        entries, files = rpt.read_inputs(inputs)
    except rpt.ReportInputError as exc:
        raise Refused(str(exc)) from None
    result = rpt.build_report(entries, files, bounds[0], bounds[1], top=top)
    if not result.counts.get("flows"):
        click.echo("residency-monitor report: no flow records in the period", err=True)
        sys.exit(3)
    text = {"html": render_html, "json": rpt.to_json, "csv": rpt.to_csv}[fmt](result)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@main.command("sample")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=SAMPLE_PATH,
              show_default=True, help="Where to write the sample capture.")
def sample_cmd(out: Path) -> None:
    """Regenerate the bundled sample capture (deterministic)."""
    from .sample import build_sample, write_pcap
    write_pcap(out, build_sample())
    click.echo(f"wrote {out}", err=True)


def _replay_auditor(directory: Path, all_flows: bool, key_file: Path | None, policy: Policy,
                    internal: tuple[str, ...], captures: list[Path]) -> Any:
    """An audit writer for ``replay --audit``: the daemon's entries, wall-clock line times."""
    from .audit import AuditLog, Auditor
    from .pseudonym import KeyFileError, Pseudonymizer, load_key

    pseudonymizer = None
    if key_file is not None:
        try:
            pseudonymizer = Pseudonymizer(load_key(key_file), internal)
        except KeyFileError as exc:
            raise Refused(str(exc)) from None
    log = AuditLog(directory)
    try:
        log.open(strict=True)
    except OSError as exc:
        raise Refused(f"audit log: {exc}") from None
    auditor = Auditor(log, all_flows=all_flows, pseudonymizer=pseudonymizer,
                      exceptions=lambda name: next(
                          (e for e in policy.exceptions if e.id == name), None))
    auditor.start(version=__version__, interfaces=[], captures=[str(p) for p in captures],
                  policy=policy.name, sha256=policy.sha256,
                  pseudonymized=pseudonymizer is not None)
    auditor.policy(policy, path=None, trigger="start")
    return auditor


@main.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log: verify its hash chain, compute pseudonyms."""


@audit_group.command("verify")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Daemon configuration whose audit.path to check (when no PATH is given).")
@click.option("--witness", metavar="[SEQ:]HASH",
              help="A checkpoint from the daemon's own log (journald: records:head or "
                   "checkpoint_seq:checkpoint_hash); the log must contain it.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def audit_verify(paths: tuple[Path, ...], config_path: Path | None, witness: str | None,
                 as_json: bool) -> None:
    """Check the audit log's hash chain across its segments (gzip ones too).

    PATH is the audit directory or segment files (default: the configured
    directory, /var/lib/residency-monitor/audit). Prints "OK: N records in M
    segments, head HASH" or the first problem as FILE:LINE: message.

    Exit status: 0 intact; 1 broken (modified, deleted, reordered or
    inserted lines, a missing or damaged segment, a checkpoint or witness
    that does not match); 2 usage error (no such path, no segments). A
    partial last line in the last segment, which a crash leaves until the
    next start repairs it, is a warning and still exit 0: the records before
    it are intact, and only a witness can tell such a tail from a cut one.
    """
    import json as json_mod

    from .audit import parse_witness, verify
    from .config import ConfigError, load_config

    if not paths:
        try:
            paths = (Path(load_config(config_path).audit.path),)
        except ConfigError as exc:
            raise Refused(f"configuration refused:\n{exc}") from None
        if not paths[0].is_dir():
            raise Refused(f"{paths[0]}: no audit log here")
    try:
        expected = parse_witness(witness) if witness else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--witness") from None
    result = verify(paths, witness=expected)
    if result.segments == 0:
        raise Refused(f"no audit segments (audit-*.jsonl[.gz]) in {', '.join(map(str, paths))}")
    if as_json:
        click.echo(json_mod.dumps(result.to_dict(), indent=None))
    else:
        click.echo(result.summary())
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
    sys.exit(result.exit_code)


@audit_group.command("pseudonym")
@click.option("--key-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The key of audit.pseudonymize_key_file.")
@click.argument("addresses", nargs=-1, required=True)
def audit_pseudonym(key_file: Path, addresses: tuple[str, ...]) -> None:
    """Print the pseudonym of each ADDRESS, to search the audit log for one machine.

    Any address is accepted: the log pseudonymises only those inside the
    internal networks.
    """
    from .pseudonym import KeyFileError, load_key, pseudonym

    try:
        key = load_key(key_file)
    except KeyFileError as exc:
        raise Refused(str(exc)) from None
    for address in addresses:
        try:
            click.echo(f"{address} {pseudonym(key, address)}")
        except ValueError:
            raise click.BadParameter(f"{address!r} is not an IP address",
                                     param_hint="ADDRESSES") from None


if __name__ == "__main__":  # pragma: no cover
    main()
