"""Residency violations as Alertmanager alerts: the alert book and its HTTP sender.

Alertmanager keeps no state of its own for pushed alerts: an alert stays firing
only while its client keeps re-sending it before its ``endsAt``, and a
resolution is only seen if the client sends it (and keeps sending it for a while,
in case an Alertmanager restarted). This module follows that client contract the
way Prometheus does.

Two layers, in the sans-I/O manner of the rest of the project:

- :class:`AlertBook` decides *what* to send *when*. It has no sockets and no
  clock: every call takes ``now``. Identity is the label set (Alertmanager's own
  deduplication rule), so a violation that repeats is one alert whose
  ``startsAt`` never moves.
- :class:`AlertmanagerClient` is the driver: a background thread feeds the book
  with the alerts the capture thread hands over, and one sender thread per
  Alertmanager (an HA pair gets every alert, independently) POSTs the due
  alerts, keeps undelivered ones in a bounded queue and retries with backoff.
  The wall clock is read here only, never in the engine.
"""

from __future__ import annotations

import base64
import collections
import http.client
import itertools
import json
import logging
import math
import queue
import random
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

ALERTNAME = "ResidencyViolation"
API_PATH = "/api/v2/alerts"

# Prometheus's defaults: re-send every minute (--rules.alert.resend-delay),
# endsAt four intervals ahead, keep re-sending resolved alerts for 15 minutes.
RESEND_INTERVAL = 60.0
ENDS_AT_INTERVALS = 4
RESOLVE_AFTER = 300.0
MAX_ALERTS = 50_000      # alerts the book holds at once (see AlertBook)
RESOLVED_RETENTION = 900.0
# Flows remembered per alert to tell a flow raised again from one more flow.
RECENT_FLOWS = 64

# Retries of an undelivered batch: exponential from BACKOFF_INITIAL, capped at
# BACKOFF_MAX, with jitter. The cap is what an outage costs after it ends: alerts
# queued meanwhile reach a recovered Alertmanager within BACKOFF_MAX seconds. A
# refused connection costs one SYN, so a short cap is cheap even during long outages.
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 10.0

# The coordinator's cycle walks the whole book. Woken by every submit during a burst
# of violations (a flood of new destinations), it would hold the GIL most of the time
# and stall the capture thread, which hands the GIL over at each of its system calls
# (a flow table flushed at shutdown took 13 s instead of 2 for 50,000 flows). So after
# a cycle that took d >= BUSY_CYCLE seconds it rests CYCLE_REST_RATIO x d: at most a
# fifth of the time goes to cycling, and a small book still sends a lone alert at once.
BUSY_CYCLE = 0.001
CYCLE_REST_RATIO = 4.0

# A repeat of a firing alert only refreshes annotations, which Alertmanager never
# notifies about; sending each repeat at once would let one busy destination
# flood Alertmanager (ntopng#2070), so refreshes wait at least this long.
REFRESH_INTERVAL = 1.0

# The labels every alert carries; configured static labels may not replace them.
CORE_LABELS = ("alertname", "rule", "zone", "classification", "dst_country", "destination",
               "severity")
# Alertmanager 0.25 refuses label and annotation names outside this pattern (400).
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True, slots=True)
class ViolationAlert:
    """One violation as the alert layer sees it (built by the daemon from a verdict)."""

    rule: str                 # residency | tls_version | plaintext | geo_unknown | no_handshake
    zone: str
    classification: str
    country: str              # ISO code or "unlocated"
    destination: str          # the server's address: part of the identity
    severity: str             # "critical" or "warning", decided by the daemon
    starts_at: float          # epoch seconds: first packet of the first flow with this violation
    detected_at: float        # epoch seconds: packet time of the deciding packet
    annotations: Mapping[str, str] = field(default_factory=dict)
    flow: str = ""            # the violating flow's identity: a flow raised again (at its
                              # handshake, at its end) refreshes, it is not one more flow


class AlertKey(NamedTuple):
    """The variable part of an alert's labels: its identity, as Alertmanager dedups.

    Classification and severity follow from the zone, so under one policy the
    identity is (zone, rule, country, destination); should a policy reload change
    them, the new label set is a new alert and the old one resolves by itself.
    """

    rule: str
    zone: str
    classification: str
    country: str
    destination: str
    severity: str


def alert_key(alert: ViolationAlert) -> AlertKey:
    return AlertKey(alert.rule, alert.zone, alert.classification, alert.country,
                    alert.destination, alert.severity)


def rfc3339(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds (what Alertmanager echoes back)."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_valid_name(name: str) -> bool:
    """Whether Alertmanager 0.25 accepts ``name`` as a label or annotation name."""
    return bool(_NAME_RE.match(name))


def sanitize_name(name: str) -> str:
    """An annotation name Alertmanager accepts: one bad key must not cost the alert."""
    cleaned = _NAME_BAD_CHARS.sub("_", name) or "_"
    return cleaned if not cleaned[0].isdigit() else "_" + cleaned


@dataclass(frozen=True, slots=True)
class DueAlert:
    """One alert object to POST now, with what the sender needs to queue and time it."""

    key: AlertKey
    episode: int              # one firing-to-resolved life of the alert, unique per book
    resolved: bool
    fresh: bool               # carries a detection not yet sent (not a periodic re-send)
    detected_at: float
    payload: dict[str, Any]   # the JSON object for POST /api/v2/alerts
    news: bool = True         # a state Alertmanager was never sent: new, fresh or resolved

    @property
    def slot(self) -> tuple[int, bool]:
        """Queue identity: newer states of the same slot supersede queued older ones."""
        return (self.episode, self.resolved)


@dataclass(slots=True)
class _Entry:
    key: AlertKey
    episode: int
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    detected_at: float
    last_raised: float
    flows: int = 1
    resolved_at: float | None = None
    last_sent: float | None = None
    sent_resolved: bool | None = None   # state of the last send; None: never sent
    dirty: bool = True                  # something not yet sent (a detection or a refresh)
    fresh: bool = True                  # a new flow's detection not yet sent (for latency)
    recent_flows: dict[str, None] = field(default_factory=dict)   # bounded, raise order

    @property
    def resolved(self) -> bool:
        return self.resolved_at is not None


class AlertBook:
    """What to send to Alertmanager and when: sans-I/O, every call takes ``now``.

    Not thread-safe: one thread owns a book (the client's coordinator thread).
    """

    def __init__(self, *, resend_interval: float = RESEND_INTERVAL,
                 resolve_after: float = RESOLVE_AFTER,
                 resolved_retention: float = RESOLVED_RETENTION,
                 refresh_interval: float = REFRESH_INTERVAL,
                 extra_labels: Mapping[str, str] | None = None,
                 generator_url: str | None = None,
                 max_alerts: int = MAX_ALERTS) -> None:
        if max_alerts < 1:
            raise ValueError(f"max_alerts must be at least 1, not {max_alerts!r}")
        for name, value in (("resend_interval", resend_interval),
                            ("resolve_after", resolve_after),
                            ("resolved_retention", resolved_retention)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        if refresh_interval < 0:
            raise ValueError(f"refresh_interval must not be negative, not {refresh_interval!r}")
        self.resend_interval = resend_interval
        self.resolve_after = resolve_after
        self.resolved_retention = resolved_retention
        self.refresh_interval = refresh_interval
        self.extra_labels = _check_extra_labels(extra_labels or {})
        self.generator_url = generator_url.rstrip("/") + "/" if generator_url else None
        self._entries: dict[AlertKey, _Entry] = {}
        self._episodes = 0
        # An outbound scan raises one alert per destination: the book holds at most
        # max_alerts (about 1.5 KB each), forgetting the one raised longest ago;
        # Alertmanager resolves a forgotten firing one at its endsAt.
        self.max_alerts = max_alerts
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def firing(self) -> int:
        """Alerts currently firing (for a gauge)."""
        return sum(1 for e in self._entries.values() if not e.resolved)

    def raise_alert(self, alert: ViolationAlert, now: float) -> None:
        """Record a violation: a new alert, or a refresh of the firing one with its identity.

        The daemon raises once per violating flow, so the ``flows`` annotation counts
        flows; ``last_seen`` is the latest deciding packet's time.
        """
        key = alert_key(alert)
        entry = self._entries.get(key)
        if entry is None or entry.resolved:
            # A resolved alert that fires again is a new episode with its own startsAt,
            # as Alertmanager itself treats a firing alert after a resolved one.
            self._episodes += 1
            self._entries.pop(key, None)   # re-insert: the dict keeps raise order
            if len(self._entries) >= self.max_alerts:
                self._make_room()
            self._entries[key] = _Entry(
                key=key, episode=self._episodes, labels=self._labels(key),
                annotations=_annotations(alert, 1), starts_at=alert.starts_at,
                detected_at=alert.detected_at, last_raised=now,
                recent_flows={alert.flow: None} if alert.flow else {})
            return
        entry.last_raised = now
        entry.dirty = True
        if alert.flow and alert.flow in entry.recent_flows:
            # the same flow again (its handshake, its end): newer details, no new detection
            entry.annotations = _annotations(alert, entry.flows)
            return
        entry.flows += 1
        entry.annotations = _annotations(alert, entry.flows)
        entry.detected_at = alert.detected_at
        entry.fresh = True
        if alert.flow:
            entry.recent_flows[alert.flow] = None
            if len(entry.recent_flows) > RECENT_FLOWS:
                del entry.recent_flows[next(iter(entry.recent_flows))]

    def _make_room(self) -> None:
        """Forget the alert raised longest ago (counted): O(1), the dict keeps raise order,
        and those are the ones resolved first or nearest to it."""
        del self._entries[next(iter(self._entries))]
        self.evicted += 1

    def due(self, now: float) -> list[dict[str, Any]]:
        """The JSON objects to POST now (see :meth:`due_items`)."""
        return [item.payload for item in self.due_items(now)]

    def due_items(self, now: float) -> list[DueAlert]:
        """Resolve and forget by age, then return what must be sent now, in raise order.

        New alerts and resolutions are due at once; refreshed annotations after
        ``refresh_interval``; everything else every ``resend_interval``.
        """
        out: list[DueAlert] = []
        for key, entry in list(self._entries.items()):
            if entry.resolved_at is None and now >= entry.last_raised + self.resolve_after:
                entry.resolved_at = entry.last_raised + self.resolve_after
            if entry.resolved_at is not None and \
                    now >= entry.resolved_at + self.resolved_retention:
                del self._entries[key]
                continue
            if now >= self._next_send(entry):
                out.append(self._emit(entry, now))
        return out

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`due_items` has work: the driver sleeps until then."""
        deadlines = [self._next_send(e) for e in self._entries.values()]
        for e in self._entries.values():
            if e.resolved_at is not None:
                deadlines.append(e.resolved_at + self.resolved_retention)
            else:
                deadlines.append(e.last_raised + self.resolve_after)
        return min(deadlines, default=None)

    def _next_send(self, entry: _Entry) -> float:
        if entry.last_sent is None or entry.sent_resolved != entry.resolved:
            return -math.inf
        if entry.dirty and not entry.resolved:
            return entry.last_sent + self.refresh_interval
        return entry.last_sent + self.resend_interval

    def _emit(self, entry: _Entry, now: float) -> DueAlert:
        fresh = entry.fresh and not entry.resolved
        news = fresh or entry.sent_resolved != entry.resolved
        item = DueAlert(key=entry.key, episode=entry.episode, resolved=entry.resolved,
                        fresh=fresh, detected_at=entry.detected_at,
                        payload=self._payload(entry, now), news=news)
        entry.last_sent = now
        entry.sent_resolved = entry.resolved
        entry.dirty = False
        entry.fresh = False
        return item

    def _payload(self, entry: _Entry, now: float) -> dict[str, Any]:
        # Alertmanager refuses endsAt before startsAt (400), which a capture clock
        # ahead of the wall clock would cause: clamp endsAt, never move startsAt.
        if entry.resolved_at is not None:
            ends_at = max(entry.resolved_at, entry.starts_at)
        else:
            ends_at = max(now, entry.starts_at) + ENDS_AT_INTERVALS * self.resend_interval
        payload: dict[str, Any] = {
            "labels": dict(entry.labels),
            "annotations": dict(entry.annotations),
            "startsAt": rfc3339(entry.starts_at),
            "endsAt": rfc3339(ends_at),
        }
        if self.generator_url:
            payload["generatorURL"] = self.generator_url
        return payload

    def _labels(self, key: AlertKey) -> dict[str, str]:
        labels = dict(self.extra_labels)
        labels.update(alertname=ALERTNAME, rule=key.rule, zone=key.zone,
                      classification=key.classification, dst_country=key.country,
                      destination=key.destination, severity=key.severity)
        return labels


def _check_extra_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Refuse bad static labels at start-up rather than with every alert (400)."""
    errors = [f"{name!r}: not a valid label name" for name in labels if not is_valid_name(name)]
    errors += [f"{name!r}: reserved for the alert's identity" for name in labels
               if name in CORE_LABELS]
    errors += [f"{name!r}: empty value (Alertmanager drops it)" for name, value in labels.items()
               if not value]
    if errors:
        raise ValueError("extra alert labels: " + "; ".join(errors))
    return {str(k): str(v) for k, v in labels.items()}


def _annotations(alert: ViolationAlert, flows: int) -> dict[str, str]:
    annotations = {sanitize_name(k): str(v) for k, v in alert.annotations.items()
                   if v is not None}
    annotations.setdefault(
        "summary", f"{alert.rule} violation: zone {alert.zone} ({alert.classification}) "
                   f"to {alert.destination} ({alert.country})")
    annotations["flows"] = str(flows)
    annotations["last_seen"] = rfc3339(alert.detected_at)
    return annotations


# --------------------------------------------------------------------------- transport


@dataclass(frozen=True, slots=True)
class PostResult:
    """The outcome of one POST: accepted, worth retrying, or refused for good."""

    accepted: bool
    retry: bool = False
    reason: str = ""          # connection | timeout | tls | protocol | credentials | http_NNN
    detail: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would re-send credentials elsewhere (and turn POST into GET): refuse it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


class AlertmanagerTarget:
    """One Alertmanager's ``POST /api/v2/alerts``: TLS, authentication, error triage.

    Credentials are read from their files at every request (so they rotate without
    a restart) and never appear in a log line or a result.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, ca_file: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 bearer_token_file: str | None = None, basic_auth_username: str | None = None,
                 basic_auth_password_file: str | None = None,
                 proxy_url: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Alertmanager URL must be http(s)://host[:port][/prefix]: {url!r}")
        if parts.username or parts.password:
            raise ValueError("Alertmanager URL must not carry credentials; use the "
                             "basic-auth username and password file")
        if bearer_token_file and basic_auth_username:
            raise ValueError("choose a bearer token or basic auth, not both")
        if bool(basic_auth_username) != bool(basic_auth_password_file):
            raise ValueError("basic auth needs both a username and a password file")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith(API_PATH) else base + API_PATH
        self.name = base.removesuffix(API_PATH)
        self.timeout = timeout
        self._bearer_token_file = bearer_token_file
        self._basic_user = basic_auth_username
        self._basic_password_file = basic_auth_password_file
        self._auth_header()   # a missing credentials file is a start-up error
        context = ssl.create_default_context(cafile=ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if client_cert:
            context.load_cert_chain(client_cert, client_key)
        proxies = {"http": proxy_url, "https": proxy_url} if proxy_url else {}
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler(proxies), urllib.request.HTTPSHandler(context=context),
            _NoRedirect())

    def post(self, alerts: Sequence[Mapping[str, Any]]) -> PostResult:
        """POST the alerts as one JSON array; never raises for network or HTTP errors."""
        try:
            auth = self._auth_header()
        except OSError as exc:
            return PostResult(False, retry=True, reason="credentials",
                              detail=f"cannot read credentials file: {exc.strerror}")
        headers = {"Content-Type": "application/json", "User-Agent": "residency-monitor"}
        if auth:
            headers["Authorization"] = auth
        body = json.dumps(list(alerts), separators=(",", ":")).encode()
        request = urllib.request.Request(self.endpoint, data=body, headers=headers,
                                         method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read()
            return PostResult(True)
        except urllib.error.HTTPError as exc:
            with exc:
                return _http_failure(exc.code, _read_reason(exc))
        except urllib.error.URLError as exc:
            return _network_failure(exc.reason)
        except (OSError, http.client.HTTPException) as exc:
            return _network_failure(exc)

    def _auth_header(self) -> str | None:
        if self._bearer_token_file:
            with open(self._bearer_token_file, encoding="utf-8") as f:
                return "Bearer " + f.read().strip()
        if self._basic_user and self._basic_password_file:
            with open(self._basic_password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
            pair = f"{self._basic_user}:{password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return None


def _read_reason(exc: urllib.error.HTTPError) -> str:
    """Alertmanager's explanation of a refusal (a JSON string or object), shortened."""
    try:
        text = exc.read(2048).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        text = ""
    try:
        parsed = json.loads(text)
        text = parsed.get("message", text) if isinstance(parsed, dict) else str(parsed)
    except ValueError:
        pass
    return (text or str(exc.reason))[:300]


def _http_failure(code: int, detail: str) -> PostResult:
    # 5xx, 408 and 429 are the server's trouble and pass; any other 4xx (or a
    # redirect) is this request's fault and would fail again identically.
    retry = code >= 500 or code in (408, 429)
    return PostResult(False, retry=retry, reason=f"http_{code}", detail=detail)


def _network_failure(reason: object) -> PostResult:
    if isinstance(reason, ssl.SSLError | ssl.CertificateError):
        kind = "tls"
    elif isinstance(reason, TimeoutError):
        kind = "timeout"
    elif isinstance(reason, http.client.HTTPException):
        kind = "protocol"
    else:
        kind = "connection"
    return PostResult(False, retry=True, reason=kind, detail=str(reason)[:300])


# --------------------------------------------------------------------------- sender

DeliveredCallback = Callable[[AlertKey, float, float], None]


@dataclass(slots=True)
class _Pending:
    item: DueAlert
    version: int


class _TargetQueue:
    """One Alertmanager's undelivered alerts, its counters and its sender thread.

    Keyed by (episode, resolved): a newer state of the same alert replaces the
    queued one in place, so an outage holds one entry per alert (not one per
    re-send), order of first appearance is kept and a late delivery still carries
    a current endsAt. Firing and resolved stay separate so that a violation
    which began and ended during an outage is still notified.
    """

    def __init__(self, target: AlertmanagerTarget, client: AlertmanagerClient) -> None:
        self.target = target
        self.client = client
        self.cond = threading.Condition()
        self.pending: collections.OrderedDict[tuple[int, bool], _Pending] = \
            collections.OrderedDict()
        self.version = 0
        self.sent = 0
        self.failed: collections.Counter[str] = collections.Counter()
        self.dropped = 0
        self.resends_skipped = 0
        self.retries = 0
        self.attempt = 0          # consecutive failed attempts of the head batch
        self.retry_at = 0.0       # time.monotonic() before which the head is not retried
        self.up = True
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"alertmanager-sender {target.name}")

    # called by the coordinator thread
    def enqueue(self, items: Sequence[DueAlert]) -> None:
        dropped: list[DueAlert] = []
        with self.cond:
            for item in items:
                old = self.pending.get(item.slot)
                if old is None and not item.news and \
                        len(self.pending) >= self.client.queue_size:
                    # A periodic re-send of an alert that is not queued (delivered before,
                    # or dropped and counted then) must not push out an undelivered one:
                    # during an outage each re-send round would drop, and count, the
                    # whole queue again. The book re-sends it once there is room.
                    self.resends_skipped += 1
                    continue
                self.version += 1
                if old is not None and old.item.fresh:
                    # the oldest undelivered detection is the one the latency is about
                    item = _with_detection(item, True, old.item.detected_at)
                # an existing slot keeps its place: a refresh neither reorders nor duplicates
                self.pending[item.slot] = _Pending(item, self.version)
            while len(self.pending) > self.client.queue_size:
                dropped.append(self.pending.popitem(last=False)[1].item)
            self.dropped += len(dropped)
            self.cond.notify()
        if dropped:
            names = "; ".join(_describe(d) for d in dropped[:3])
            more = f" and {len(dropped) - 3} more" if len(dropped) > 3 else ""
            self.client.log.warning(
                "alertmanager %s: queue full (%d): dropped the %d oldest undelivered alerts "
                "(%d dropped so far): %s%s", self.target.name, self.client.queue_size,
                len(dropped), self.dropped, names, more)

    def stats(self) -> dict[str, Any]:
        with self.cond:
            return {"sent": self.sent, "failed": dict(self.failed), "queued": len(self.pending),
                    "dropped": self.dropped, "retries": self.retries, "up": self.up,
                    "resends_skipped": self.resends_skipped}

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._deliver(batch)
            except Exception:   # a bug here must not silently end alerting
                self.client.log.exception("alertmanager %s: sender error", self.target.name)
                self.client.stop_event.wait(1.0)

    def _next_batch(self) -> list[_Pending] | None:
        """Wait for work (or for the backoff to pass); None when the client stops."""
        with self.cond:
            while True:
                if self.client.stop_event.is_set():
                    return None
                if not self.pending:
                    if self.client.drained.is_set():
                        return None
                    self.cond.wait()
                    continue
                delay = self.retry_at - time.monotonic()
                if delay <= 0:
                    return list(itertools.islice(self.pending.values(),
                                                 self.client.max_batch))
                self.cond.wait(delay)

    def _deliver(self, batch: list[_Pending]) -> None:
        if self.attempt:
            with self.cond:
                self.retries += 1
        result = self.target.post([p.item.payload for p in batch])
        if result.accepted:
            self._accepted(batch, time.time())
        elif result.retry:
            self._retry_later(batch, result)
        elif len(batch) > 1:
            # Alertmanager answers 400 for the whole request but still stores its valid
            # alerts; post them one by one to learn which ones it refused.
            for one in batch:
                if not self._deliver_single(one):
                    break
        else:
            self._refused(batch, result)

    def _deliver_single(self, pending: _Pending) -> bool:
        """Post one alert; False if the Alertmanager became unreachable meanwhile."""
        result = self.target.post([pending.item.payload])
        if result.accepted:
            self._accepted([pending], time.time())
        elif result.retry:
            self._retry_later([pending], result)
            return False
        else:
            self._refused([pending], result)
        return True

    def _accepted(self, batch: list[_Pending], accepted_at: float) -> None:
        with self.cond:
            self._settle(batch)
            self.sent += len(batch)
            recovered = self.attempt
            self.attempt = 0
            self.retry_at = 0.0
            self.up = True
        if recovered:
            self.client.log.info("alertmanager %s: delivering again after %d failed attempts",
                                 self.target.name, recovered)
        for p in batch:
            if p.item.fresh:
                self.client.delivered(p.item, accepted_at)

    def _retry_later(self, batch: list[_Pending], result: PostResult) -> None:
        with self.cond:
            self.failed[result.reason] += len(batch)
            self.attempt += 1
            delay = self.client.backoff(self.attempt)
            self.retry_at = time.monotonic() + delay
            self.up = False
            attempt, queued = self.attempt, len(self.pending)
        # the first failure of an outage is news; its retries are not
        log = self.client.log.warning if attempt == 1 else self.client.log.debug
        log("alertmanager %s: %d alerts not delivered (%s: %s); %d queued, retry %d in %.2f s",
            self.target.name, len(batch), result.reason, result.detail, queued, attempt, delay)

    def _settle(self, batch: list[_Pending]) -> None:
        """Take a finished batch off the queue, except entries superseded meanwhile."""
        for p in batch:
            current = self.pending.get(p.item.slot)
            if current is None:
                continue
            if current.version == p.version:
                del self.pending[p.item.slot]
            elif current.item.fresh and current.item.detected_at == p.item.detected_at:
                # the newer version inherited this detection, which is now accounted for
                current.item = _with_detection(current.item, False, current.item.detected_at)

    def _refused(self, batch: list[_Pending], result: PostResult) -> None:
        with self.cond:
            self._settle(batch)
            self.failed[result.reason] += len(batch)
        self.client.log.error("alertmanager %s: refused %s (%s: %s); not retried",
                              self.target.name, _describe(batch[0].item), result.reason,
                              result.detail)


def _with_detection(item: DueAlert, fresh: bool, detected_at: float) -> DueAlert:
    return DueAlert(key=item.key, episode=item.episode, resolved=item.resolved, fresh=fresh,
                    detected_at=detected_at, payload=item.payload, news=item.news)


def _describe(item: DueAlert) -> str:
    k = item.key
    state = "resolved" if item.resolved else "firing"
    return f"{state} {k.rule} zone={k.zone} country={k.country} destination={k.destination}"


class AlertmanagerClient:
    """Pushes residency alerts to one or more Alertmanagers from background threads.

    ``submit`` is the capture thread's only call: a non-blocking hand-off. A
    coordinator thread owns the :class:`AlertBook`; each Alertmanager has its own
    queue and sender thread, so one that is down or slow never holds up another.
    ``on_delivered(key, detected_at, accepted_at)`` runs on a sender thread each
    time an Alertmanager accepts a new detection (once per Alertmanager), for the
    verdict-to-alert-accepted histogram.
    """

    def __init__(self, urls: Sequence[str], *, book: AlertBook | None = None,
                 queue_size: int = 10000, timeout: float = 5.0, max_batch: int = 64,
                 ca_file: str | None = None, client_cert: str | None = None,
                 client_key: str | None = None, bearer_token_file: str | None = None,
                 basic_auth_username: str | None = None,
                 basic_auth_password_file: str | None = None, proxy_url: str | None = None,
                 on_delivered: DeliveredCallback | None = None,
                 logger: logging.Logger | None = None,
                 backoff_initial: float = BACKOFF_INITIAL, backoff_max: float = BACKOFF_MAX,
                 clock: Callable[[], float] = time.time) -> None:
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise ValueError("at least one Alertmanager URL is needed")
        if len(set(urls)) != len(urls):
            raise ValueError("an Alertmanager URL is listed twice")
        if queue_size < 1 or max_batch < 1:
            raise ValueError("queue_size and max_batch must be at least 1")
        self.book = book if book is not None else AlertBook()
        self.queue_size = queue_size
        self.max_batch = max_batch
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.log = logger or logging.getLogger(__name__)
        self._on_delivered = on_delivered
        self._clock = clock
        self._inbox: queue.SimpleQueue[ViolationAlert] = queue.SimpleQueue()
        self._wake = threading.Event()
        self.stop_event = threading.Event()
        self.drained = threading.Event()   # the coordinator's last hand-off is done
        self.closing = False
        self._close_requested = threading.Event()   # cuts the coordinator's rest short
        self.submitted = 0
        self._firing = 0
        self._targets = [
            _TargetQueue(AlertmanagerTarget(
                url, timeout=timeout, ca_file=ca_file, client_cert=client_cert,
                client_key=client_key, bearer_token_file=bearer_token_file,
                basic_auth_username=basic_auth_username,
                basic_auth_password_file=basic_auth_password_file, proxy_url=proxy_url), self)
            for url in urls]
        self._coordinator = threading.Thread(target=self._run, daemon=True,
                                             name="alertmanager-coordinator")
        self._coordinator.start()
        for t in self._targets:
            t.thread.start()

    def __enter__(self) -> AlertmanagerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, alert: ViolationAlert) -> None:
        """Hand a violation to the alert threads; never blocks, never does I/O."""
        self.submitted += 1
        self._inbox.put(alert)
        self._wake.set()

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what can be delivered within ``timeout`` s, then stop; True if all was.

        Firing alerts are not resolved: a restarted daemon takes them over, and if
        none does, Alertmanager resolves them at their endsAt.
        """
        deadline = time.monotonic() + timeout
        self.closing = True
        self._close_requested.set()
        self._wake.set()
        self._coordinator.join(max(0.0, deadline - time.monotonic()))
        for t in self._targets:
            with t.cond:
                t.retry_at = min(t.retry_at, time.monotonic())  # no backoff at shutdown
                t.cond.notify()
        for t in self._targets:
            t.thread.join(max(0.0, deadline - time.monotonic()))
        self.stop_event.set()
        left = 0
        for t in self._targets:
            with t.cond:
                left += len(t.pending)
                t.cond.notify()
            if t.pending:
                self.log.warning("alertmanager %s: %d alerts undelivered at shutdown",
                                 t.target.name, len(t.pending))
        return left == 0

    # ---- counters for metrics

    def stats(self) -> dict[str, Any]:
        """Counters summed over the Alertmanagers, and per Alertmanager under ``targets``."""
        per = {t.target.name: t.stats() for t in self._targets}
        failed: collections.Counter[str] = collections.Counter()
        for s in per.values():
            failed.update(s["failed"])
        return {
            "submitted": self.submitted, "firing": self._firing,
            "sent": sum(s["sent"] for s in per.values()), "failed": dict(failed),
            "queued": sum(s["queued"] for s in per.values()),
            "dropped": sum(s["dropped"] for s in per.values()),
            "retries": sum(s["retries"] for s in per.values()),
            "resends_skipped": sum(s["resends_skipped"] for s in per.values()),
            "evicted": self.book.evicted, "targets": per,
        }

    @property
    def sent(self) -> int:
        return int(self.stats()["sent"])

    @property
    def failed(self) -> dict[str, int]:
        return dict(self.stats()["failed"])

    @property
    def queued(self) -> int:
        return int(self.stats()["queued"])

    @property
    def dropped(self) -> int:
        return int(self.stats()["dropped"])

    @property
    def retries(self) -> int:
        return int(self.stats()["retries"])

    # ---- used by the threads

    def backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter so an HA pair's clients do not retry in step."""
        delay = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
        return delay * random.uniform(0.5, 1.0)

    def delivered(self, item: DueAlert, accepted_at: float) -> None:
        if self._on_delivered is None:
            return
        try:
            self._on_delivered(item.key, item.detected_at, accepted_at)
        except Exception:
            self.log.exception("alert delivery callback failed")

    def _run(self) -> None:
        sleep = 0.0
        while not self.closing:
            self._wake.wait(sleep)
            self._wake.clear()
            started = time.monotonic()
            self._safe_cycle()
            sleep = self._sleep_time()
            spent = time.monotonic() - started
            if spent >= BUSY_CYCLE:   # see CYCLE_REST_RATIO
                rest = CYCLE_REST_RATIO * spent
                self._close_requested.wait(rest)
                sleep = max(0.0, sleep - rest)
        self._safe_cycle()   # alerts submitted just before close()
        self.drained.set()
        for t in self._targets:
            with t.cond:
                t.cond.notify()

    def _safe_cycle(self) -> None:
        try:
            self._cycle()
        except Exception:   # a bug here must not silently end alerting
            self.log.exception("alert coordinator error")
            self.stop_event.wait(1.0)

    def _cycle(self) -> None:
        """Feed the book with submitted alerts and hand what is due to every queue."""
        while True:
            try:
                alert = self._inbox.get_nowait()
            except queue.Empty:
                break
            self.book.raise_alert(alert, self._clock())
        items = self.book.due_items(self._clock())
        self._firing = self.book.firing()
        if items:
            for t in self._targets:
                t.enqueue(items)

    def _sleep_time(self) -> float:
        deadline = self.book.next_deadline()
        if deadline is None:
            return 1.0
        return min(1.0, max(0.0, deadline - self._clock()))
