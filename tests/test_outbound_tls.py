"""Alerts to a real Alertmanager behind TLS, client certificates and basic auth.

Alertmanager reads the same exporter-toolkit web config as the metrics
endpoint (``--web.config.file``): here it serves HTTPS with the test CA's
certificate for 127.0.0.1, requires a client certificate signed by that CA,
and a bcrypt basic-auth user. The real daemon captures the sample's traffic
in a namespace pair and must deliver its violations with its ``ca_file``,
client certificate and password file; with the wrong CA every delivery fails
as a certificate error, counted by reason and retried, and with the wrong
password as HTTP 401. The password never appears in the daemon's log or its
metrics, whatever happens.
"""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest
from alertmanager_fixture import (  # noqa: F401  (fixtures)
    Alertmanager,
    WebhookReceiver,
    alertmanager_factory_fixture,
    webhook_fixture,
)
from certs import certificates
from daemon_fixture import DaemonProcess
from daemon_fixture import scrape as _metrics
from daemon_fixture import wait_until as _wait
from netns_fixture import NetnsPair

USER = "gateway"
PASSWORD = "correct horse battery staple 7"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    return certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def stranger_ca(tmp_path_factory) -> str:
    """A CA that signed nothing Alertmanager serves."""
    return certificates(tmp_path_factory.mktemp("other-certs"))["ca"]


@pytest.fixture
def secure_alertmanager(alertmanager_factory, certs, tmp_path) -> Alertmanager:
    web = tmp_path / "alertmanager-web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"""\
tls_server_config:
  cert_file: {certs['server']}
  key_file: {certs['server_key']}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {certs['ca']}
basic_auth_users:
  {USER}: {hashed}
""")
    # the fixture's own readiness checks and API calls go through the same door
    return alertmanager_factory(web_config=web, tls_ca=certs["ca"], auth=(USER, PASSWORD),
                                client_cert=(certs["client"], certs["client_key"]))


def _daemon(pair: NetnsPair, workdir: Path, url: str, ca_file: str, certs: dict[str, str],
            password: str = PASSWORD) -> DaemonProcess:
    secret = workdir.parent / f"{workdir.name}.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    return DaemonProcess(workdir, [
        "capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
        "flows: {tcp_idle: 5, tcp_closed: 1, udp_idle: 2}",
        "alertmanager:", f"  urls: [{url}]", "  resend_interval: 2", "  timeout: 2",
        f"  ca_file: {ca_file}",
        f"  cert_file: {certs['client']}", f"  key_file: {certs['client_key']}",
        f"  basic_auth: {{username: {USER}, password_file: {secret}}}",
        "  labels: {site: tls-e2e}"])


def _value(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def _never_leaked(daemon: DaemonProcess) -> None:
    for text in (daemon.log_text(), _metrics(daemon.port)):
        assert PASSWORD not in text


def test_alerts_reach_an_alertmanager_behind_tls_client_certs_and_basic_auth(
        pair, sample_replay, secure_alertmanager, webhook: WebhookReceiver, certs, tmp_path):
    assert secure_alertmanager.url.startswith("https://")
    daemon = _daemon(pair, tmp_path / "daemon", secure_alertmanager.url, certs["ca"], certs)
    daemon.start()
    try:
        pair.replay(sample_replay, pps=2000)
        assert webhook.wait_for(lambda alerts: {
            a.labels["dst_country"] for a in alerts
            if a.labels.get("alertname") == "ResidencyViolation"
            and a.labels.get("site") == "tls-e2e"} >= {"US", "CN", "DE"}, timeout=30)
        text = _metrics(daemon.port)
        assert _value(text, "residency_alerts_sent_total") >= 9
        assert _value(text, "residency_alerts_failed_total") == 0
        _never_leaked(daemon)
    finally:
        assert daemon.stop() == 0
    assert PASSWORD not in daemon.log_text()


def test_a_wrong_ca_fails_every_delivery_as_a_certificate_error(
        pair, sample_replay, secure_alertmanager, webhook: WebhookReceiver, certs, stranger_ca,
        tmp_path):
    daemon = _daemon(pair, tmp_path / "daemon", secure_alertmanager.url, stranger_ca, certs)
    daemon.start()
    try:
        pair.replay(sample_replay, pps=2000)
        assert _wait(lambda: _value(_metrics(daemon.port), "residency_alert_retries_total") >= 2,
                     30), _metrics(daemon.port)
        text = _metrics(daemon.port)
        assert _value(text, 'residency_alerts_failed_total{reason="tls"}') > 0, text
        assert _value(text, "residency_alerts_sent_total") == 0
        assert "CERTIFICATE_VERIFY_FAILED" in daemon.log_text() \
            or "certificate verify failed" in daemon.log_text()
        assert not [a for a in webhook.alerts() if a.labels.get("site") == "tls-e2e"]
        _never_leaked(daemon)
    finally:
        assert daemon.stop() == 0
    assert PASSWORD not in daemon.log_text()


def test_a_wrong_password_is_refused_by_alertmanager_and_never_logged(
        pair, sample_replay, secure_alertmanager, certs, tmp_path):
    wrong = "not the password at all 42"
    daemon = _daemon(pair, tmp_path / "daemon", secure_alertmanager.url, certs["ca"], certs,
                     password=wrong)
    daemon.start()
    try:
        pair.replay(sample_replay, pps=2000)
        assert _wait(lambda: _value(_metrics(daemon.port),
                                    'residency_alerts_failed_total{reason="http_401"}') > 0,
                     30), _metrics(daemon.port)
        assert wrong not in daemon.log_text() and wrong not in _metrics(daemon.port)
        _never_leaked(daemon)
    finally:
        assert daemon.stop() == 0
