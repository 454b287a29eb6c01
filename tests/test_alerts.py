"""Alerts: the AlertBook with explicit times, the HTTP sender, a real Alertmanager end to end."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from alertmanager_fixture import (  # noqa: F401 (the *_fixture names are fixtures)
    Alertmanager,
    ReceivedAlert,
    WebhookReceiver,
    alertmanager_factory_fixture,
    alertmanager_fixture,
    webhook_fixture,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from residency_monitor.alerts import (
    ALERTNAME,
    AlertBook,
    AlertKey,
    AlertmanagerClient,
    AlertmanagerTarget,
    ViolationAlert,
    alert_key,
    rfc3339,
)

T0 = 1_700_000_000.0


def violation(destination: str = "crm.example.com", *, rule: str = "residency",
              zone: str = "finance", country: str = "US", starts_at: float = T0,
              detected_at: float | None = None, **annotations: str) -> ViolationAlert:
    ann = {"client": "10.1.2.3", "server": "203.0.113.7", "sni": destination,
           "bytes_so_far": "1200", "explanation": "zone default (personal): US not permitted"}
    ann.update(annotations)
    return ViolationAlert(rule=rule, zone=zone, classification="personal", country=country,
                          destination=destination, severity="critical", starts_at=starts_at,
                          detected_at=starts_at + 0.05 if detected_at is None else detected_at,
                          annotations=ann)


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- AlertBook


def book(**kwargs: Any) -> AlertBook:
    params: dict[str, Any] = {"resend_interval": 60.0, "resolve_after": 300.0,
                              "resolved_retention": 900.0, "refresh_interval": 1.0}
    params.update(kwargs)
    return AlertBook(**params)


def test_new_alert_is_due_at_once_with_its_identity_labels() -> None:
    b = book(extra_labels={"site": "macau-office", "instance": "gw1"},
             generator_url="http://gw1:9464")
    b.raise_alert(violation(), T0 + 1)
    [payload] = b.due(T0 + 1)
    assert payload["labels"] == {
        "alertname": ALERTNAME, "rule": "residency", "zone": "finance",
        "classification": "personal", "dst_country": "US", "destination": "crm.example.com",
        "severity": "critical", "site": "macau-office", "instance": "gw1"}
    assert payload["annotations"]["bytes_so_far"] == "1200"
    assert payload["annotations"]["flows"] == "1"
    assert payload["annotations"]["last_seen"] == rfc3339(T0 + 0.05)
    assert "crm.example.com" in payload["annotations"]["summary"]
    assert payload["startsAt"] == "2023-11-14T22:13:20.000Z" == rfc3339(T0)
    assert parse_time(payload["endsAt"]) == T0 + 1 + 4 * 60    # as Prometheus: 4 intervals
    assert payload["generatorURL"] == "http://gw1:9464/"
    json.dumps(payload)   # JSON as it stands
    assert b.due(T0 + 1.5) == []


def test_an_outbound_scan_keeps_the_book_bounded_forgetting_the_oldest() -> None:
    """One alert per destination of a scan: at most max_alerts are remembered, the one
    raised longest ago goes first (counted); a refresh keeps an alert's place."""
    b = book(max_alerts=100)
    for i in range(250):
        b.raise_alert(violation(f"host{i}.example"), T0 + i)
        b.raise_alert(violation(f"host{i}.example"), T0 + i)   # its handshake: a refresh
    assert len(b) == 100 and b.evicted == 150
    kept = {p["labels"]["destination"] for p in b.due(T0 + 300)}
    assert kept == {f"host{i}.example" for i in range(150, 250)}
    with pytest.raises(ValueError):
        book(max_alerts=0)


def test_repeat_is_one_alert_refreshed_with_the_original_starts_at() -> None:
    b2 = book()
    b2.raise_alert(violation(), T0)
    b2.due(T0)
    b2.raise_alert(violation(starts_at=T0 + 0.5, bytes_so_far="99000"), T0 + 0.5)
    assert b2.due(T0 + 0.6) == []                    # sent 0.6 s ago: wait for 1 s
    [payload] = b2.due(T0 + 1.0)
    assert payload["startsAt"] == rfc3339(T0)       # original, not the repeat's
    assert payload["annotations"]["bytes_so_far"] == "99000"
    assert payload["annotations"]["flows"] == "2"
    assert len(b2) == 1


def test_distinct_identities_are_separate_alerts_in_raise_order() -> None:
    b = book()
    b.raise_alert(violation("b.example.com"), T0)
    b.raise_alert(violation("a.example.com"), T0)
    b.raise_alert(violation("a.example.com", rule="tls_version"), T0)
    b.raise_alert(violation("a.example.com", country="CN"), T0)
    b.raise_alert(violation("a.example.com", zone="hr"), T0)
    got = [(p["labels"]["destination"], p["labels"]["rule"], p["labels"]["dst_country"],
            p["labels"]["zone"]) for p in b.due(T0)]
    assert got == [("b.example.com", "residency", "US", "finance"),
                   ("a.example.com", "residency", "US", "finance"),
                   ("a.example.com", "tls_version", "US", "finance"),
                   ("a.example.com", "residency", "CN", "finance"),
                   ("a.example.com", "residency", "US", "hr")]


def test_firing_alert_is_resent_every_interval_with_ends_at_moved() -> None:
    b = book()
    b.raise_alert(violation(), T0)
    b.due(T0)
    assert b.next_deadline() == T0 + 60
    assert b.due(T0 + 59.9) == []
    b.raise_alert(violation(), T0 + 100)   # keeps it firing (refresh sent at 100)
    [refresh] = b.due(T0 + 100)
    assert parse_time(refresh["endsAt"]) == T0 + 100 + 240
    assert b.due(T0 + 159.9) == []
    [resend] = b.due(T0 + 160)
    assert parse_time(resend["endsAt"]) == T0 + 160 + 240
    assert resend["startsAt"] == rfc3339(T0)


def test_resolution_retention_then_forgotten() -> None:
    b = book()
    b.raise_alert(violation(), T0)
    b.due(T0)
    b.due(T0 + 60)
    b.due(T0 + 120)
    b.due(T0 + 180)
    b.due(T0 + 240)
    assert b.due(T0 + 299.9) == []
    [resolved] = b.due(T0 + 301)      # not raised for resolve_after: resolved at T0+300
    assert parse_time(resolved["endsAt"]) == T0 + 300
    assert resolved["startsAt"] == rfc3339(T0)
    assert b.firing() == 0 and len(b) == 1
    assert b.due(T0 + 360) == []                       # re-sent every interval ...
    assert [parse_time(p["endsAt"]) for p in b.due(T0 + 361)] == [T0 + 300]
    for t in range(421, 1200, 60):
        b.due(T0 + t)
    assert b.due(T0 + 1199.9) == [] and len(b) == 1   # ... for resolved_retention
    assert b.due(T0 + 1200) == [] and len(b) == 0      # then forgotten
    assert b.next_deadline() is None


def test_violation_after_resolution_is_a_new_alert_with_its_own_starts_at() -> None:
    b = book(resolve_after=10, resolved_retention=100)
    b.raise_alert(violation(), T0)
    b.due(T0)
    [resolved] = b.due(T0 + 11)
    assert parse_time(resolved["endsAt"]) == T0 + 10
    b.raise_alert(violation(starts_at=T0 + 20), T0 + 20)
    [firing] = b.due(T0 + 20)                        # immediately, not after the refresh wait
    assert firing["startsAt"] == rfc3339(T0 + 20)
    assert parse_time(firing["endsAt"]) > T0 + 20
    assert firing["annotations"]["flows"] == "1"


def test_ends_at_never_before_starts_at_when_capture_clock_runs_ahead() -> None:
    b = book(resolve_after=10)
    b.raise_alert(violation(starts_at=T0 + 1000), T0)    # packet time ahead of the wall clock
    [firing] = b.due(T0)
    assert parse_time(firing["endsAt"]) > parse_time(firing["startsAt"])
    [resolved] = b.due(T0 + 10)
    assert parse_time(resolved["endsAt"]) == parse_time(resolved["startsAt"]) == T0 + 1000


def test_due_items_carry_identity_and_fresh_detection() -> None:
    b = book()
    a = violation(detected_at=T0 + 0.25)
    b.raise_alert(a, T0 + 0.3)
    [item] = b.due_items(T0 + 0.3)
    assert item.key == alert_key(a) == AlertKey("residency", "finance", "personal", "US",
                                                "crm.example.com", "critical")
    assert item.fresh and not item.resolved and item.detected_at == T0 + 0.25
    [resend] = b.due_items(T0 + 60.3)
    assert not resend.fresh and resend.slot == item.slot


def test_the_same_flow_raised_again_is_a_refresh_not_one_more_flow() -> None:
    """The daemon raises a flow's violation at its first packet, its handshake and its end."""
    import dataclasses

    b = book()
    first = dataclasses.replace(violation(detected_at=T0 + 0.1), flow="f1")
    b.raise_alert(first, T0 + 0.1)
    [item] = b.due_items(T0 + 0.1)
    assert item.fresh and item.payload["annotations"]["flows"] == "1"
    b.raise_alert(dataclasses.replace(violation(detected_at=T0 + 0.3, bytes_so_far="9000"),
                                      flow="f1"), T0 + 30)
    [refresh] = b.due_items(T0 + 31)
    assert not refresh.fresh and refresh.detected_at == T0 + 0.1   # not a new detection
    assert refresh.payload["annotations"]["flows"] == "1"
    assert refresh.payload["annotations"]["bytes_so_far"] == "9000"
    b.raise_alert(dataclasses.replace(violation(detected_at=T0 + 40), flow="f2"), T0 + 40)
    [second] = b.due_items(T0 + 41)
    assert second.fresh and second.detected_at == T0 + 40
    assert second.payload["annotations"]["flows"] == "2"


def test_bad_names_are_refused_or_cleaned() -> None:
    with pytest.raises(ValueError, match="'bad-name': not a valid label name"):
        AlertBook(extra_labels={"bad-name": "x"})
    with pytest.raises(ValueError, match="'zone': reserved"):
        AlertBook(extra_labels={"zone": "x"})
    with pytest.raises(ValueError, match="resend_interval must be positive"):
        AlertBook(resend_interval=0)
    b = book()
    b.raise_alert(dataclasses.replace(violation(), annotations={"bytes-so-far": "1", "2nd": "x"}),
                  T0)
    ann = b.due(T0)[0]["annotations"]
    assert ann["bytes_so_far"] == "1" and ann["_2nd"] == "x"


# --------------------------------------------------------------------------- fake Alertmanager


class FakeAlertmanager:
    """A tiny HTTP(S) server standing in for Alertmanager: answers what it is told, records."""

    def __init__(self, status: int | Callable[[list[dict[str, Any]]], int] = 200,
                 context: ssl.SSLContext | None = None) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], list[dict[str, Any]], int]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = fake.status(body) if callable(fake.status) else fake.status
                with fake.lock:
                    fake.requests.append((dict(self.headers), body, status))
                reply = b'"invalid label set: refused by the test server"' if status >= 400 \
                    else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [a for _, body, status in self.requests if status == 200 for a in body]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def fake_am() -> Iterator[Callable[..., FakeAlertmanager]]:
    servers: list[FakeAlertmanager] = []

    def make(*args: Any, **kwargs: Any) -> FakeAlertmanager:
        servers.append(FakeAlertmanager(*args, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.01)
    pytest.fail(f"not within {timeout} s: {what}")


def fast_book(**kwargs: Any) -> AlertBook:
    params: dict[str, Any] = {"resend_interval": 0.5, "resolve_after": 30.0,
                              "resolved_retention": 60.0, "refresh_interval": 0.2,
                              "extra_labels": {"site": "test"}}
    params.update(kwargs)
    return AlertBook(**params)


def client(urls: list[str] | str, **kwargs: Any) -> AlertmanagerClient:
    params: dict[str, Any] = {"book": fast_book(), "timeout": 2.0, "backoff_initial": 0.05,
                              "backoff_max": 0.3}
    params.update(kwargs)
    return AlertmanagerClient(urls, **params)


def now_violation(destination: str, **kwargs: Any) -> ViolationAlert:
    t = time.time()
    return violation(destination, starts_at=t - 0.5, detected_at=t, **kwargs)


def test_outage_on_the_wire_keeps_order_and_starts_at(
        fake_am: Callable[..., FakeAlertmanager]) -> None:
    am = fake_am(503)
    alerts = [now_violation(f"d{i}.example.com") for i in range(6)]
    with client(am.url) as c:
        for a in alerts:
            c.submit(a)
        wait_until(lambda: c.retries >= 3, what="retries during the outage")
        assert c.failed["http_503"] >= 6 and c.queued == 6 and c.sent == 0
        am.status = 200
        wait_until(lambda: c.sent >= 6, what="delivery after the outage")
    first_seen: list[str] = []
    for payload in am.accepted():
        if payload["labels"]["destination"] not in first_seen:
            first_seen.append(payload["labels"]["destination"])
    assert first_seen == [a.destination for a in alerts]
    for payload in am.accepted():
        original = next(a for a in alerts if a.destination == payload["labels"]["destination"])
        assert payload["startsAt"] == rfc3339(original.starts_at)


def test_refused_batch_is_split_and_only_the_bad_alert_fails(
        fake_am: Callable[..., FakeAlertmanager], caplog: pytest.LogCaptureFixture) -> None:
    am = fake_am(503)

    def refuse_bad(body: list[dict[str, Any]]) -> int:
        return 400 if any(a["labels"]["destination"] == "bad.example" for a in body) else 200

    with client(am.url) as c:
        c.submit(now_violation("good.example"))
        c.submit(now_violation("bad.example"))
        wait_until(lambda: c.retries >= 1 and c.queued == 2, what="both queued")
        am.status = refuse_bad
        wait_until(lambda: c.failed.get("http_400") == 1 and c.sent >= 1, what="split")
        time.sleep(0.3)
        assert c.queued == 0
    assert [a["labels"]["destination"] for a in am.accepted()][:1] == ["good.example"]
    bad_posts = [b for _, b, s in am.requests if s == 400 and len(b) == 1]
    assert len(bad_posts) == 1                         # refused once, never retried
    assert "refused by the test server" in caplog.text and "http_400" in caplog.text


def test_tls_with_custom_ca_client_certificate_and_bearer_token(
        tmp_path: Path, fake_am: Callable[..., FakeAlertmanager],
        caplog: pytest.LogCaptureFixture) -> None:
    pki = make_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    server_ctx.load_cert_chain(pki["server"], pki["server_key"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    am = fake_am(200, context=server_ctx)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    caplog.set_level(logging.DEBUG, logger="residency_monitor.alerts")
    with client(am.url, ca_file=str(pki["ca"]), client_cert=str(pki["client"]),
                client_key=str(pki["client_key"]), bearer_token_file=str(token)) as c:
        c.submit(now_violation("tls.example"))
        wait_until(lambda: c.sent == 1, what="delivery over mutual TLS")
    headers, body, _ = am.requests[0]
    assert headers["Authorization"] == "Bearer s3cret-token"
    assert body[0]["labels"]["destination"] == "tls.example"
    # a server certificate from an unknown CA is refused, retried, never accepted
    c = client(am.url)
    c.submit(now_violation("untrusted.example"))
    wait_until(lambda: c.failed.get("tls", 0) >= 2, what="tls failures")
    assert c.close(timeout=0.2) is False and c.sent == 0
    assert len(am.requests) == 1
    assert "certificate verify failed" in caplog.text
    assert "s3cret" not in caplog.text


def test_basic_auth_from_a_password_file(tmp_path: Path,
                                         fake_am: Callable[..., FakeAlertmanager]) -> None:
    am = fake_am(200)
    password = tmp_path / "password"
    password.write_text("pa:ss wörd\n")
    with client(am.url, basic_auth_username="monitor",
                basic_auth_password_file=str(password)) as c:
        c.submit(now_violation("basic.example"))
        wait_until(lambda: c.sent == 1, what="delivery with basic auth")
    expected = base64.b64encode("monitor:pa:ss wörd".encode()).decode()
    assert am.requests[0][0]["Authorization"] == "Basic " + expected
    with pytest.raises(ValueError, match="must not carry credentials"):
        AlertmanagerTarget("http://user:pw@127.0.0.1:9093")
    with pytest.raises(FileNotFoundError):
        AlertmanagerTarget(am.url, bearer_token_file=str(tmp_path / "missing"))


def test_close_reports_what_could_not_be_delivered(caplog: pytest.LogCaptureFixture) -> None:
    c = client("http://127.0.0.1:9")        # discard port: nobody listens
    c.submit(now_violation("lost.example"))
    started = time.monotonic()
    assert c.close(timeout=0.5) is False
    assert time.monotonic() - started < 2.0
    assert c.queued == 1 and c.failed.get("connection", 0) >= 1
    assert "1 alerts undelivered at shutdown" in caplog.text


def test_client_refuses_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        AlertmanagerClient([])
    with pytest.raises(ValueError, match="listed twice"):
        AlertmanagerClient(["http://127.0.0.1:9093", "http://127.0.0.1:9093"])
    with pytest.raises(ValueError, match="http"):
        AlertmanagerTarget("ftp://127.0.0.1:9093")
    with pytest.raises(ValueError, match="not both"):
        AlertmanagerTarget("http://127.0.0.1:9093", bearer_token_file=str(tmp_path / "t"),
                           basic_auth_username="u", basic_auth_password_file="p")
    target = AlertmanagerTarget("https://am.example:9093/prefix/")
    assert target.endpoint == "https://am.example:9093/prefix/api/v2/alerts"
    assert target.name == "https://am.example:9093/prefix"


def make_pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = dt.datetime.now(dt.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": tmp_path / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, san in (("server", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
                      ("client", x509.DNSName("monitor.test"))):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(2 + len(out))
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        out[name] = tmp_path / f"{name}.pem"
        out[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"] = tmp_path / f"{name}.key"
        out[f"{name}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return out


# --------------------------------------------------------------------------- real Alertmanager


def received(webhook: WebhookReceiver, destination: str,
             status: str = "firing") -> list[ReceivedAlert]:
    return [a for a in webhook.alerts()
            if a.labels.get("destination") == destination and a.status == status]


def arrived(destination: str,
            status: str = "firing") -> Callable[[list[ReceivedAlert]], list[ReceivedAlert]]:
    """A webhook.wait_for predicate: the alerts received for this destination."""
    def predicate(alerts: list[ReceivedAlert]) -> list[ReceivedAlert]:
        return [a for a in alerts
                if a.labels.get("destination") == destination and a.status == status]
    return predicate


def test_alert_reaches_the_webhook_with_labels_annotations_and_starts_at(
        alertmanager: Alertmanager, webhook: WebhookReceiver,
        capsys: pytest.CaptureFixture[str]) -> None:
    delivered: list[tuple[AlertKey, float, float]] = []
    latencies = []
    def on_delivered(key: AlertKey, detected_at: float, accepted_at: float) -> None:
        delivered.append((key, detected_at, accepted_at))

    with client(alertmanager.url, on_delivered=on_delivered) as c:
        for i in range(8):
            a = now_violation(f"crm{i}.example.com", bytes_so_far=str(1000 * i))
            submitted = time.time()
            c.submit(a)
            [got] = webhook.wait_for(arrived(a.destination))
            latencies.append((got.received_at - submitted) * 1000)
        # the webhook may be notified before Alertmanager's answer to the POST reaches us
        wait_until(lambda: len(delivered) == 8, what="eight deliveries acknowledged")
        wait_until(lambda: c.stats()["sent"] >= 8, what="eight sends counted")
        assert c.stats()["firing"] == 8
    assert got.labels == {"alertname": ALERTNAME, "rule": "residency", "zone": "finance",
                          "classification": "personal", "dst_country": "US",
                          "destination": "crm7.example.com", "severity": "critical",
                          "site": "test"}
    assert got.annotations["bytes_so_far"] == "7000"
    assert got.annotations["client"] == "10.1.2.3" and got.annotations["flows"] == "1"
    assert abs(parse_time(got.starts_at) - a.starts_at) < 0.001
    assert got.external_url == alertmanager.url
    [(key, detected_at, accepted_at)] = [d for d in delivered if d[0] == alert_key(a)]
    assert detected_at == a.detected_at and accepted_at >= detected_at
    [stored] = [x for x in alertmanager.get_alerts()
                if x["labels"]["destination"] == "crm7.example.com"]
    assert stored["status"]["state"] == "active"
    assert abs(parse_time(stored["startsAt"]) - a.starts_at) < 0.001
    with capsys.disabled():
        print(f"\nsubmit -> webhook latency over {len(latencies)} alerts: "
              f"min {min(latencies):.1f} ms, median {statistics.median(latencies):.1f} ms, "
              f"max {max(latencies):.1f} ms")


def test_same_violation_twice_is_one_alert(alertmanager: Alertmanager,
                                           webhook: WebhookReceiver) -> None:
    first = now_violation("dup.example.com", bytes_so_far="100")
    with client(alertmanager.url) as c:
        c.submit(first)
        webhook.wait_for(arrived("dup.example.com"))
        c.submit(violation("dup.example.com", starts_at=first.starts_at + 0.3,
                           detected_at=time.time(), bytes_so_far="5000"))

        def refreshed() -> list[dict[str, Any]]:
            return [x for x in alertmanager.get_alerts()
                    if x["annotations"].get("bytes_so_far") == "5000"]
        [stored] = wait_until(refreshed, what="refreshed annotations in Alertmanager")
        time.sleep(2.2)      # two group intervals: a refresh must not notify again
    assert [x["labels"]["destination"] for x in alertmanager.get_alerts()] == ["dup.example.com"]
    assert stored["annotations"]["flows"] == "2"
    assert abs(parse_time(stored["startsAt"]) - first.starts_at) < 0.001
    assert len(received(webhook, "dup.example.com")) == 1


def test_resolution_reaches_the_webhook(alertmanager: Alertmanager,
                                        webhook: WebhookReceiver) -> None:
    a = now_violation("gone.example.com")
    with client(alertmanager.url, book=fast_book(resolve_after=1.0, resolved_retention=3.0)) as c:
        c.submit(a)
        webhook.wait_for(arrived("gone.example.com"))
        [resolved] = webhook.wait_for(arrived("gone.example.com", "resolved"))
        assert c.stats()["firing"] == 0
    assert abs(parse_time(resolved.starts_at) - a.starts_at) < 0.001
    assert parse_time(resolved.ends_at) > a.starts_at
    assert alertmanager.get_alerts() == []      # the API lists no resolved alerts


def test_ha_pair_each_alertmanager_gets_every_alert(
        alertmanager_factory: Callable[..., Alertmanager], webhook: WebhookReceiver) -> None:
    am1, am2 = alertmanager_factory(), alertmanager_factory()
    with client([am1.url, am2.url]) as c:
        c.submit(now_violation("ha.example.com"))
        got = webhook.wait_for(lambda _: {a.external_url for a in
                                          received(webhook, "ha.example.com")} == {am1.url,
                                                                                   am2.url})
        assert got
        # the webhook can be notified before Alertmanager's 200 reaches the client
        for url in (am1.url, am2.url):
            wait_until(lambda u=url: c.stats()["targets"][u]["sent"] >= 1, what=f"sent to {url}")
    for am in (am1, am2):
        assert [x["labels"]["destination"] for x in am.get_alerts()] == ["ha.example.com"]


def test_one_alertmanager_down_does_not_hold_up_the_other(
        alertmanager_factory: Callable[..., Alertmanager], webhook: WebhookReceiver) -> None:
    up, down = alertmanager_factory(), alertmanager_factory()
    down.stop()
    with client([down.url, up.url]) as c:
        c.submit(now_violation("half.example.com"))
        webhook.wait_for(arrived("half.example.com"), timeout=2)
        wait_until(lambda: c.stats()["targets"][down.url]["retries"] >= 2, what="retries")
        down.start()
        webhook.wait_for(lambda _: {a.external_url for a in
                                    received(webhook, "half.example.com")} == {up.url, down.url})


def test_outage_every_alert_arrives_in_order_with_its_starts_at(
        alertmanager: Alertmanager, webhook: WebhookReceiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="residency_monitor.alerts")
    order: list[str] = []

    def on_delivered(key: AlertKey, detected_at: float, accepted_at: float) -> None:
        order.append(key.destination)

    with client(alertmanager.url, on_delivered=on_delivered) as c:
        c.submit(now_violation("before.example.com"))
        webhook.wait_for(arrived("before.example.com"))
        alertmanager.stop()
        raised = []
        for i in range(5):
            raised.append(now_violation(f"outage{i}.example.com"))
            c.submit(raised[-1])
            time.sleep(0.15)
        wait_until(lambda: c.retries >= 3, what="retries while Alertmanager is down")
        wait_until(lambda: c.queued >= 5 and c.failed.get("connection", 0) >= 5,
                   what="five alerts queued and failed while Alertmanager is down")
        alertmanager.start()
        for a in raised:
            [got] = webhook.wait_for(arrived(a.destination))
            assert abs(parse_time(got.starts_at) - a.starts_at) < 0.001
        # the alert from before the outage is back too (re-sent, not re-notified: the
        # restarted Alertmanager kept its notification log)
        wait_until(lambda: any(x["labels"]["destination"] == "before.example.com"
                               for x in alertmanager.get_alerts()), what="re-sent alert")
        time.sleep(1.2)      # a group interval
    assert len(webhook.wait_for(arrived("before.example.com"))) == 1
    assert [d for d in order if d.startswith("outage")] == [a.destination for a in raised]
    assert "not delivered (connection" in caplog.text
    assert "delivering again" in caplog.text


def test_queue_bound_drops_the_oldest_and_counts_them(
        alertmanager: Alertmanager, webhook: WebhookReceiver,
        caplog: pytest.LogCaptureFixture) -> None:
    alertmanager.stop()
    raised = [now_violation(f"q{i}.example.com") for i in range(5)]
    with client(alertmanager.url, queue_size=3,
                book=fast_book(resend_interval=60.0)) as c:
        for a in raised:
            c.submit(a)
        wait_until(lambda: c.dropped == 2, what="two dropped")
        assert c.queued == 3
        alertmanager.start()
        webhook.wait_for(lambda _: all(received(webhook, a.destination) for a in raised[2:]))
        time.sleep(1.0)
        assert c.stats()["dropped"] == 2
    assert not received(webhook, "q0.example.com") and not received(webhook, "q1.example.com")
    assert "queue full (3)" in caplog.text
    assert "q0.example.com" in caplog.text and "q1.example.com" in caplog.text


def test_rejected_alerts_are_counted_failed_with_the_reason(
        alertmanager: Alertmanager, webhook: WebhookReceiver,
        fake_am: Callable[..., FakeAlertmanager], caplog: pytest.LogCaptureFixture) -> None:
    refusing = fake_am(400)
    # (a long resend interval: the periodic re-send would be refused again, rightly)
    with client([refusing.url, alertmanager.url], book=fast_book(resend_interval=60.0)) as c:
        c.submit(now_violation("refused.example.com"))
        webhook.wait_for(arrived("refused.example.com"))
        wait_until(lambda: c.failed.get("http_400") == 1, what="the refusal counted")
        time.sleep(0.5)
        stats = c.stats()["targets"]
    assert stats[refusing.url]["failed"] == {"http_400": 1}
    assert stats[refusing.url]["queued"] == 0 and stats[refusing.url]["retries"] == 0
    assert len(refusing.requests) == 1                  # not retried
    assert stats[alertmanager.url]["sent"] >= 1
    assert "refused firing residency" in caplog.text
    assert "http_400: invalid label set: refused by the test server" in caplog.text


def test_real_alertmanager_refusal_is_classified(alertmanager: Alertmanager) -> None:
    target = AlertmanagerTarget(alertmanager.url)
    result = target.post([{"labels": {"alertname": "X", "bad-name": "v"}}])
    assert (result.accepted, result.retry, result.reason) == (False, False, "http_400")
    assert result.detail == 'invalid label set: invalid name "bad-name"'
    result = target.post([{"labels": {"alertname": "X"}, "startsAt": "2030-01-01T00:00:00Z",
                           "endsAt": "2029-01-01T00:00:00Z"}])
    assert result.detail == "start time must be before end time"
    assert target.post([{"labels": {"alertname": "Fine"}}]).accepted
    alertmanager.stop()
    down = target.post([{"labels": {"alertname": "Fine"}}])
    assert (down.accepted, down.retry, down.reason) == (False, True, "connection")
