"""The gateway daemon: live capture, verdicts, metrics, alerts, until told to stop.

A thin driver around the same :class:`~.engine.Engine` as replay. The capture
loop runs in the main thread; the metrics endpoint and the Alertmanager
sender run in their own threads and only read counters or take finished
alerts, so a scrape or an unreachable Alertmanager never stalls capture.
Signals only set flags (uvicorn's pattern): SIGHUP reloads the policy and
geolocation databases, SIGTERM/SIGINT stop cleanly (flush open flows,
deliver pending alerts within a bounded wait); a second SIGTERM/SIGINT
stops at once.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter

from . import __version__, sdnotify
from .alerts import AlertBook, AlertmanagerClient, ViolationAlert
from .audit import AlertFailureHandler, AuditLog, Auditor, live_data
from .capture.live import HANDSHAKE_FILTER, LiveCapture, LiveCaptureError, LiveConfig
from .collector import FlowExportInput, flow_export_input
from .config import Config
from .engine import Engine, EngineConfig
from .exporter import Exporter
from .flows import Flow
from .geo import Geolocator
from .metrics import Metrics
from .networks import NetworkSet
from .policy import FlowFacts, Policy, PolicyError, Verdict, default_policy, load_policy
from .privileges import PrivilegeError, cap_names, drop_privileges
from .pseudonym import KeyFileError, Pseudonymizer, load_key
from .records import FlowRecord
from .residency import Residency
from .tls_names import version_name
from .webconfig import WebConfigFile
from .workers import EngineTotals, WorkerPool
from .yamlcheck import ConfigError, Issue

EXIT_OK, EXIT_CONFIG, EXIT_CAPTURE = 0, 2, 3
# A capture interface vanished while running: with every capability dropped after start it
# cannot be reopened, so exit for the supervisor to start afresh (3 would stop systemd's restarts).
EXIT_CAPTURE_LOST = 4
READ_TIMEOUT = 0.2          # seconds a capture read may wait: also the loop's idle tick
SHUTDOWN_ALERT_WAIT = 5.0   # seconds from SIGTERM to deliver pending alerts when stopping
# Flushing open flows at stop gets this long (systemd's TimeoutStopSec is 30 s; the alert
# wait and the audit log's close come after): beyond it the unanswered rest is dropped.
STOP_FLUSH_BUDGET = 20.0
SHUTDOWN_ALERT_LAST = 1.0   # seconds at least, after the flush, for the alerts it raised
SEVERE = frozenset(("personal", "sensitive"))

log = logging.getLogger("residency_monitor")
ALERT_LOG = log.getChild("alerts")   # the Alertmanager client's; its warnings are audited


class StartupError(Exception):
    """The daemon cannot start; ``code`` is its exit status (see systemd's RestartPrevent)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Flags:
    """Set by signal handlers, read by the loop: handlers do nothing else."""

    stop: bool = False
    reload: bool = False
    forced: int = 0
    reasons: list[str] = field(default_factory=list)


class Daemon:
    """Everything ``residency-monitor run`` holds, wired together."""

    def __init__(self, config: Config, policy: Policy, geo: Geolocator):
        self.config = config
        self.policy = policy
        self.geo = geo
        self.flags = Flags()
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, build_version=__version__)
        self.residency = Residency(policy, geo, NetworkSet(config.internal_networks))
        self.engine: Engine | EngineTotals = Engine(
            EngineConfig(flows=config.flows, internal_networks=config.internal_networks),
            sink=self._record, live=self._live, enrich=self.residency)
        if self.engine.inspection is not None:
            self.residency.names = self.engine.inspection.names
        cc = config.capture
        live_config = LiveConfig(
            interfaces=cc.interfaces, bpf=HANDSHAKE_FILTER if cc.mode == "handshake" else cc.bpf,
            rcvbuf=cc.rcvbuf_bytes, promisc=cc.promiscuous, netns=cc.netns,
            ring=cc.read_path == "ring", block_bytes=cc.ring_block_bytes, blocks=cc.ring_blocks,
            block_timeout_ms=cc.ring_block_timeout_ms)
        self.capture: LiveCapture | FlowExportInput | WorkerPool = LiveCapture(live_config)
        if cc.workers > 1 and not config.sources:   # fanout workers (workers.py)
            pool = WorkerPool(live_config, cc.workers, self)
            self.capture, self.engine = pool, pool.totals
        if config.sources:   # flow export: capture only on interfaces named (no CAP_NET_RAW)
            self.capture = flow_export_input(
                config.sources, self._record, self.residency, config.internal_networks,
                LiveCapture(live_config) if config.capture.interfaces else None, self.registry)
        self.alerts: AlertmanagerClient | None = None   # started in start()
        self.web_config_refused = Counter(
            "residency_web_config_refused", "Edits of the metrics web config file that were "
            "refused (the previous configuration stays in force).", registry=self.registry)
        try:
            self.exporter = Exporter(
                self.registry, address=config.metrics.listen_address, port=config.metrics.port,
                certfile=config.metrics.tls_cert_file, keyfile=config.metrics.tls_key_file,
                client_cafile=config.metrics.client_ca_file, landing=self._landing, logger=log,
                web_config=self._web_config())
        except (ConfigError, ValueError) as exc:
            raise StartupError(EXIT_CONFIG, f"metrics web config refused:\n{exc}") from None
        self.records_out: TextIO | None = None
        self.metrics.policy_loaded(policy, "success")
        # The audit log (audit.py): opened in start(), written before any alert is submitted.
        self.audit_log: AuditLog | None = None
        self.auditor: Auditor | None = None
        self.pseudonymizer: Pseudonymizer | None = None
        self._alert_audit: AlertFailureHandler | None = None

    # -- wiring ------------------------------------------------------------------------
    def _web_config(self) -> WebConfigFile | None:
        """The exporter-toolkit file; a bad one at start raises (exit 2), later it is refused."""
        path = self.config.metrics.web_config_file
        if not path:
            return None
        try:
            return WebConfigFile(path, on_error=self._web_config_refused)
        except OSError as exc:
            raise ConfigError([Issue(path, 0, "", f"cannot read: {exc.strerror}")]) from None

    def _web_config_refused(self, exc: Exception) -> None:
        # Called from a scrape's thread when the edited file is broken: say so, keep serving.
        self.web_config_refused.inc()
        log.error("metrics web config refused; the previous one stays in force",
                  extra={"event": "web_config_reload", "result": "failure",
                         "errors": str(exc).splitlines()})

    def _alert_client(self) -> AlertmanagerClient | None:
        am = self.config.alertmanager
        if not am.urls:
            return None
        book = AlertBook(resend_interval=am.resend_interval, resolve_after=am.resolve_after,
                         extra_labels=dict(am.labels), max_alerts=am.max_alerts)
        try:
            return AlertmanagerClient(
                list(am.urls), book=book, queue_size=am.queue_size, timeout=am.timeout,
                ca_file=am.ca_file, client_cert=am.cert_file, client_key=am.key_file,
                bearer_token_file=am.bearer_token_file,
                basic_auth_username=am.basic_auth_username,
                basic_auth_password_file=am.basic_auth_password_file,
                on_delivered=self._delivered, logger=ALERT_LOG)
        except ValueError as exc:
            raise StartupError(EXIT_CONFIG, f"alertmanager: {exc}") from None

    def _landing(self) -> dict[str, Any]:
        return {"version": __version__, "policy": self.policy.name,
                "policy_sha256": self.policy.sha256,
                "interfaces": ", ".join(self.capture.interfaces)}

    def _delivered(self, _identity: object, detected_at: float, accepted_at: float) -> None:
        self.metrics.observe_alert_delivered(max(0.0, accepted_at - detected_at))

    # -- per flow event (never per packet) ---------------------------------------------
    def _record(self, rec: FlowRecord) -> None:
        if self.auditor is not None:   # the evidence first, then any alert about it
            self.auditor.record(rec)
        if rec.final:
            self.metrics.observe_record(rec)
            if rec.verdict == "violation" and self.alerts is not None:
                if self.audit_log is not None:
                    self.audit_log.flush()    # on disk before anyone is told
                # Most violations were alerted live; this catches those only a flow's end
                # shows (no handshake ever completed). Re-raising one is a no-op refresh.
                for alert in record_alerts(rec, self.policy, self._pseudonym):
                    self.alerts.submit(alert)
        if self.records_out is not None:
            self.records_out.write(rec.to_json() + "\n")

    def _live(self, flow: Flow, ts: float, stage: str) -> None:
        hit = self.residency.judge_live(flow, ts, stage)
        if hit is not None:
            self.live_verdict(flow, hit[0], hit[1], ts)

    def live_verdict(self, flow: Any, verdict: Verdict, facts: FlowFacts, ts: float) -> None:
        """A live violation's evidence, metrics and alerts (judged here, or by a worker)."""
        self.metrics.observe_verdict(ts - flow.ts_first)
        if self.auditor is not None:
            self.auditor.live(
                (facts.client_ip, facts.server_ip, facts.server_port, flow.ts_first),
                live_data(ts_start=flow.ts_first, detected_at=ts, client_ip=facts.client_ip,
                          client_port=flow.ckey[-4] << 8 | flow.ckey[-3],
                          server_ip=facts.server_ip,
                          server_port=facts.server_port, transport=facts.transport,
                          app=facts.app, tls_sni=facts.sni,
                          tls_version=version_name(facts.tls_version)
                          if facts.tls_version else None,
                          dst_country=facts.country, verdict=verdict))
        if self.alerts is not None:
            if self.audit_log is not None:
                self.audit_log.flush()    # the evidence on disk before the alert leaves
            for alert in violation_alerts(flow, verdict, facts, ts, self.policy,
                                          self._pseudonym):
                self.alerts.submit(alert)

    @property
    def _pseudonym(self) -> Callable[[str], str] | None:
        return self.pseudonymizer.address if self.pseudonymizer is not None else None

    def _open_audit(self) -> None:
        """Open the audit log (a failure to write is logged and retried, never fatal)."""
        cfg = self.config.audit
        if not cfg.enabled:
            return
        self.audit_log = AuditLog(
            cfg.path, rotate_bytes=cfg.rotate_bytes, rotate_daily=cfg.rotate_daily,
            compress=cfg.compress, fsync_interval=cfg.fsync_interval,
            checkpoint_interval=cfg.checkpoint_interval, retention_days=cfg.retention_days,
            on_checkpoint=_log_checkpoint)
        self.audit_log.open()
        self.auditor = Auditor(self.audit_log, all_flows=cfg.all_flows,
                               pseudonymizer=self.pseudonymizer, exceptions=self._exception)
        self.auditor.start(version=__version__, interfaces=list(self.capture.interfaces),
                           policy=self.policy.name, sha256=self.policy.sha256,
                           pseudonymized=self.pseudonymizer is not None)
        self.auditor.policy(self.policy, path=self.config.policy, trigger="start")
        if self.alerts is not None:
            alerts = self.alerts
            self._alert_audit = AlertFailureHandler(
                self.auditor, lambda url: alerts.stats()["targets"].get(url, {}).get("queued"))
            ALERT_LOG.addHandler(self._alert_audit)

    def _exception(self, name: str) -> Any:
        return next((e for e in self.policy.exceptions if e.id == name), None)

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        key_file = self.config.audit.pseudonymize_key_file
        if self.config.audit.enabled and key_file:
            try:
                self.pseudonymizer = Pseudonymizer(load_key(key_file),
                                                   self.config.internal_networks)
            except KeyFileError as exc:
                raise StartupError(EXIT_CONFIG, f"audit: {exc}") from None
        try:
            self.capture.open()
        except LiveCaptureError as exc:
            raise StartupError(EXIT_CAPTURE, f"capture: {exc}") from None
        try:
            self.exporter.bind()
        except OSError as exc:
            self.capture.close()
            raise StartupError(EXIT_CONFIG, f"metrics endpoint: {exc}") from None
        try:
            if self.config.records:
                self.records_out = open(  # noqa: SIM115 (closed in stop())
                    self.config.records, "a", encoding="utf-8", buffering=1)
            # Sockets open, port bound, no thread started yet: capabilities are per thread.
            dropped = self._drop_privileges()
            self.alerts = self._alert_client()
        except StartupError:
            self.exporter.stop()
            self.capture.close()
            raise
        self.exporter.start()
        self._open_audit()
        self.metrics.attach(engine=self.engine, capture_stats=self.capture.stats, geo=self.geo,
                            alerts=self.alerts, audit=self.audit_log)
        log.info("started", extra={"event": "start", "interfaces": list(self.capture.interfaces),
                                   "policy": self.policy.name, "sha256": self.policy.sha256,
                                   "metrics": f"{self.config.metrics.listen_address}:"
                                              f"{self.exporter.port}"})
        dropped()   # after "start": the first event of a run stays the start
        quiet_gc()
        sdnotify.ready(f"capturing on {', '.join(self.capture.interfaces)}")

    def _drop_privileges(self) -> Callable[[], None]:
        """Every capability goes (CAP_NET_RAW only opens sockets); root may become ``user``.

        Returns the log call saying what was dropped, made once the daemon has started.
        """
        user = self.config.user
        try:
            import pwd

            entry = pwd.getpwnam(user) if user else None
        except KeyError:
            raise StartupError(EXIT_CONFIG, f"user: no such user: {user}") from None
        if entry is not None and os.geteuid() == 0 and self.config.audit.enabled:
            try:
                _hand_over(self.config.audit.path, entry.pw_uid, entry.pw_gid)
            except OSError as exc:
                raise StartupError(EXIT_CONFIG, f"audit: cannot give {exc.filename} to "
                                                f"{user}: {exc.strerror}") from None
        try:
            done = drop_privileges(user)
        except PrivilegeError as exc:
            raise StartupError(EXIT_CONFIG, f"user: {exc}") from None
        dropped = cap_names(done.before.get("CapPrm", 0) | done.before.get("CapAmb", 0)
                            | done.before.get("CapInh", 0))
        extra = {"event": "privileges", "uid": done.uid, "gid": done.gid, "dropped": dropped,
                 "bounding_set_left": cap_names(done.after.get("CapBnd", 0))}
        if done.warnings:
            return lambda: log.warning("could not drop every capability: %s",
                                       "; ".join(done.warnings),
                                       extra={**extra, "errors": list(done.warnings)})
        if done.uid == 0:
            return lambda: log.warning("running as root (uid 0) without capabilities: configure "
                                       "`user:` (or run --user) to leave root as well",
                                       extra=extra)
        return lambda: log.info("privileges dropped", extra=extra)

    def run(self) -> int:
        """The capture loop; returns the exit status."""
        watchdog = sdnotify.watchdog_interval()
        last_ping = last_geo = 0.0
        while not self.flags.stop:
            try:
                frames = self.capture.read(READ_TIMEOUT)
            except LiveCaptureError as exc:
                # Capabilities are gone, so the socket cannot be reopened: exit, be restarted.
                log.error("capture lost: %s; exiting to be restarted (no capability is left "
                          "to reopen it)", exc, extra={"event": "capture_lost"})
                self.stop()
                return EXIT_CAPTURE_LOST
            if frames:
                self.engine.run(frames)
            now = time.time()
            self.engine.advance(now)  # kernel timestamps are wall-clock: time may pass idly
            if self.audit_log is not None:
                self.audit_log.tick(now)   # fsync, checkpoint and retention when due
            if self.flags.reload:
                self.flags.reload = False
                self.reload()
            if now - last_geo >= self.config.geo.reload_check_interval:
                last_geo = now
                for message in self.geo.maybe_reload(now):
                    log.warning(message, extra={"event": "geo_reload"})
            if watchdog and now - last_ping >= watchdog / 2:
                last_ping = now
                sdnotify.watchdog()
        return self.stop()

    def reload(self) -> None:
        """SIGHUP: re-read the policy (a bad one is refused, the old stays) and the databases."""
        sdnotify.reloading()
        path = self.config.policy
        try:
            policy = load_policy(path) if path else default_policy()
        except PolicyError as exc:
            if self.auditor is not None:
                self.auditor.policy(None, path=path, trigger="sighup",
                                    errors=[str(e) for e in exc.errors])
            self.metrics.policy_loaded(self.policy, "failure")
            log.error("policy reload refused; the running policy stays in force",
                      extra={"event": "policy_reload", "result": "failure",
                             "errors": [str(e) for e in exc.errors]})
        else:
            self.policy = self.residency.policy = policy
            if self.auditor is not None:
                self.auditor.policy(policy, path=path, trigger="sighup")
            self.metrics.policy_loaded(policy, "success")
            log.info("policy reloaded", extra={"event": "policy_reload", "result": "success",
                                               "policy": policy.name, "sha256": policy.sha256})
        for message in self.geo.reload():
            log.warning(message, extra={"event": "geo_reload"})
        if isinstance(self.capture, WorkerPool):   # each worker judges with its own copy
            self.capture.reload()
        sdnotify.ready("reloaded")

    def stop(self) -> int:
        sdnotify.stopping()
        stopping = time.monotonic()
        self.capture.close()
        if isinstance(self.records_out, io.TextIOWrapper):   # flushing a flood: one
            self.records_out.reconfigure(line_buffering=False)  # write per line is slow
        deadline = stopping + STOP_FLUSH_BUDGET
        dropped = self.engine.finish(give_up=lambda: time.monotonic() >= deadline)
        if dropped:
            log.warning("stop: %d flows still open were dropped without a record after %.0f s "
                        "of flushing (answered flows were written first)", dropped,
                        STOP_FLUSH_BUDGET, extra={"event": "stop_flush_cut", "flows": dropped})
        if self.alerts is not None:
            # The senders have been delivering while the flow table was flushed: the
            # wait counts from the stop, so an Alertmanager that is down does not add
            # its full wait to a long flush (the exit stays within max(flush, wait) + 1 s).
            spent = time.monotonic() - stopping
            self.alerts.close(max(SHUTDOWN_ALERT_LAST, SHUTDOWN_ALERT_WAIT - spent))
        self.exporter.stop()
        if self.records_out is not None:
            self.records_out.close()
        if self.auditor is not None and self.audit_log is not None:
            self.auditor.stop(packets=self.engine.packets, records=self.engine.records,
                              reason="signal")
            self.audit_log.close()   # a last checkpoint, its witness in our log
        if self._alert_audit is not None:
            ALERT_LOG.removeHandler(self._alert_audit)
        log.info("stopped", extra={"event": "stop", "packets": self.engine.packets,
                                   "records": self.engine.records})
        return EXIT_OK

    def install_signals(self) -> None:
        def stop(signum: int, _frame: object) -> None:
            if self.flags.stop:  # a second signal: stop now, without flushing
                sys.exit(128 + signum)
            self.flags.stop = True

        def hup(_signum: int, _frame: object) -> None:
            self.flags.reload = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)


def quiet_gc() -> None:
    """Let Python's cyclic collector run far less often once everything is loaded.

    A flow is several GC-tracked objects, so a flood that fills the table keeps
    triggering full collections that walk it all: filling 1M flows spent 1.75 s
    in 8 full collections with the defaults, 0.99 s after gc.freeze(), 0.13 s
    and none with these thresholds (benchmarks/bench_attacks.py's engine). The
    monitor makes little cyclic garbage; reference counting frees the rest.
    """
    gc.freeze()                          # start-up objects (policy, databases) never scanned
    gc.set_threshold(50_000, 20, 100)


def violation_alerts(flow: Flow, verdict: Verdict, facts: FlowFacts, ts: float,
                     policy: Policy,
                     pseudonym: Callable[[str], str] | None = None) -> list[ViolationAlert]:
    """One alert per violated rule; identity = (rule, zone, country, destination address).

    The destination is the server's address, not its name: the address is
    known at the first packet, the name only after the ClientHello, and an
    alert's identity must not change between the two (it would become two
    alerts). Alertmanager groups them by rule, zone and country (see
    configs/alertmanager), so a SaaS behind many addresses is one notification;
    the server name is an annotation. ``pseudonym`` replaces the internal
    client's address in the annotations (audit.pseudonymize_key_file).
    """
    destination = facts.server_ip
    annotations = {
        "client": pseudonym(facts.client_ip) if pseudonym else facts.client_ip,
        "server": f"{facts.server_ip}:{facts.server_port}",
        "sni": facts.sni or "", "app": facts.app,
        "tls_version": version_name(facts.tls_version) if facts.tls_version else "",
        "bytes_so_far": str(flow.by_c + flow.by_s), "explanation": verdict.explanation,
        "policy": f"{policy.name} ({policy.sha256[:12]})", "detected_at": _rfc3339(ts),
    }
    if verdict.exception_expired:
        annotations["exception_hint"] = f"exception {verdict.exception_expired} has expired"
    return [ViolationAlert(
        rule=rule, zone=verdict.zone or "default", classification=verdict.classification or "",
        country=facts.country or "unlocated", destination=destination,
        severity="critical" if verdict.classification in SEVERE else "warning",
        starts_at=flow.ts_first, detected_at=ts, annotations=annotations,
        flow=flow_id(facts.client_ip, facts.server_ip, facts.server_port, flow.ts_first))
        for rule in verdict.violations]


def flow_id(client: str, server: str, port: int, first: float) -> str:
    """A flow's identity for the alert layer: the same from its first packet to its record."""
    return f"{client}>{server}:{port}@{first:.6f}"


def record_alerts(rec: FlowRecord, policy: Policy,
                  pseudonym: Callable[[str], str] | None = None) -> list[ViolationAlert]:
    """Alerts for a finished flow's violations, with the same identity as the live ones."""
    annotations = {
        "client": pseudonym(rec.client_ip) if pseudonym else rec.client_ip,
        "server": f"{rec.server_ip}:{rec.server_port}",
        "sni": rec.tls_sni or "", "app": rec.app, "tls_version": rec.tls_version or "",
        "bytes_so_far": str(rec.bytes_out + rec.bytes_in), "explanation": rec.explanation or "",
        "policy": f"{policy.name} ({policy.sha256[:12]})",
        "detected_at": _rfc3339(rec.detected_at or rec.ts_end),
    }
    if rec.exception_expired:
        annotations["exception_hint"] = f"exception {rec.exception_expired} has expired"
    return [ViolationAlert(
        rule=rule, zone=rec.zone or "default", classification=rec.classification or "",
        country=rec.dst_country or "unlocated", destination=rec.server_ip,
        severity="critical" if rec.classification in SEVERE else "warning",
        starts_at=rec.ts_start, detected_at=rec.detected_at or rec.ts_end,
        annotations=annotations,
        flow=flow_id(rec.client_ip, rec.server_ip, rec.server_port, rec.ts_start))
        for rule in rec.violations]


def _hand_over(directory: str, uid: int, gid: int) -> None:
    """Root switching user: give it the audit directory and files root left there."""
    os.makedirs(directory, mode=0o750, exist_ok=True)
    for path in [directory, *(os.path.join(directory, n) for n in os.listdir(directory))]:
        if os.lstat(path).st_uid == 0:
            os.lchown(path, uid, gid)


def _log_checkpoint(records: int, head: str, seq: int, digest: str) -> None:
    """The witness of the audit chain, outside the audit directory (journald).

    ``audit verify --witness SEQ:HASH`` with either pair detects a tail cut
    off the log after this point, which the chain alone cannot show.
    """
    log.info("audit checkpoint", extra={"event": "audit_checkpoint", "records": records,
                                        "head": head, "checkpoint_seq": seq,
                                        "checkpoint_hash": digest})


def _rfc3339(ts: float) -> str:
    """Packet time as RFC 3339 UTC with microseconds (the deciding packet's kernel time)."""
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="microseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what journald and log shippers want off a terminal."""

    _SKIP = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "msg": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in self._SKIP})
        return json.dumps(out, default=str)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("residency_monitor")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
