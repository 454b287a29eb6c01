"""A real Alertmanager for tests, with a webhook receiver that records its notifications.

Import the fixtures into a test module (``tests/`` is on ``sys.path``)::

    from alertmanager_fixture import (  # noqa: F401 (fixtures)
        alertmanager_factory_fixture, alertmanager_fixture, webhook_fixture)

and ask for them by their names below. (The functions carry a ``_fixture``
suffix so that test parameters do not shadow the imports, which ruff reports
as F811. Do not list this module in ``pytest_plugins`` as well: once imported,
pytest can no longer rewrite it and warns, and warnings are errors here.)

- ``webhook``: a :class:`WebhookReceiver`, a threaded HTTP server in the test
  process collecting every notification Alertmanager POSTs.
- ``alertmanager``: a started :class:`Alertmanager` (Debian's
  ``prometheus-alertmanager``) on a free port of 127.0.0.1, routing every alert
  to ``webhook`` with group_wait 0s, group_interval 1s and one group per alert
  (``group_by: ['...']``), so a new alert is notified within milliseconds.
  ``stop()`` and ``start()`` (or ``restart()``) keep the port and the storage
  directory, for outage tests.
- ``alertmanager_factory()``: more instances sharing the webhook (an HA pair).
  ``web_config=`` (an exporter-toolkit file: TLS, basic auth) starts one
  behind ``--web.config.file``; give ``tls_ca`` (then ``url`` is https://)
  ``auth`` and ``client_cert`` (certificate, key) so that readiness checks and
  ``get_alerts`` can get through.

Everything is stopped and closed at teardown. A missing binary fails the test
(``make test`` installs the Debian package); it does not skip.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

BINARY = "prometheus-alertmanager"
READY_TIMEOUT = 15.0

CONFIG_TEMPLATE = """\
route:
  receiver: webhook
  group_by: ['...']
  group_wait: {group_wait}
  group_interval: {group_interval}
  repeat_interval: {repeat_interval}
receivers:
  - name: webhook
    webhook_configs:
      - url: {webhook_url}
        send_resolved: true
"""


def alertmanager_binary() -> str:
    """The Alertmanager binary, or a failed test saying how to get it."""
    path = shutil.which(BINARY)
    if path is None:
        pytest.fail(f"{BINARY} not found on PATH: the end-to-end alert tests drive a real "
                    "Alertmanager. `make test` installs it (Debian package "
                    "prometheus-alertmanager), or: apt-get install -y prometheus-alertmanager",
                    pytrace=False)
    return path


def free_port() -> int:
    """A port nobody listens on now (the kernel's choice; there is a small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ReceivedAlert:
    """One alert of one webhook notification, with when the notification arrived."""

    received_at: float        # time.time() at arrival
    external_url: str         # which Alertmanager sent it
    status: str               # firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str
    raw: dict[str, Any]


class WebhookReceiver:
    """Collects Alertmanager webhook notifications (JSON POSTs) in the test process."""

    def __init__(self) -> None:
        self.notifications: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                receiver._record(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass   # keep the test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="alert-webhook")
        self._thread.start()

    def _record(self, body: dict[str, Any]) -> None:
        with self._cond:
            self.notifications.append((time.time(), body))
            self._cond.notify_all()

    def alerts(self) -> list[ReceivedAlert]:
        """Every alert of every notification so far, in arrival order."""
        with self._cond:
            notes = list(self.notifications)
        return [ReceivedAlert(at, body.get("externalURL", ""), a["status"], a["labels"],
                              a.get("annotations", {}), a["startsAt"], a["endsAt"], a)
                for at, body in notes for a in body.get("alerts", [])]

    def wait_for(self, predicate: Callable[[list[ReceivedAlert]], Any],
                 timeout: float = 10.0) -> Any:
        """Wait until ``predicate(alerts())`` is truthy and return its value; fail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = len(self.notifications)
            result = predicate(self.alerts())
            if result:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"webhook: condition not met within {timeout} s; received "
                            f"{seen} notifications, the last: "
                            f"{[n for _, n in self.notifications][-3:]}")
            with self._cond:
                if len(self.notifications) == seen:
                    self._cond.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class Alertmanager:
    """One ``prometheus-alertmanager`` process that can be stopped and started again."""

    def __init__(self, workdir: Path, webhook_url: str, *, port: int | None = None,
                 group_wait: str = "0s", group_interval: str = "1s",
                 repeat_interval: str = "1h", extra_args: tuple[str, ...] = (),
                 web_config: Path | None = None, tls_ca: str | None = None,
                 auth: tuple[str, str] | None = None,
                 client_cert: tuple[str, str] | None = None) -> None:
        self.binary = alertmanager_binary()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / "alertmanager.yml"
        self.config_file.write_text(CONFIG_TEMPLATE.format(
            group_wait=group_wait, group_interval=group_interval,
            repeat_interval=repeat_interval, webhook_url=webhook_url))
        self.storage = workdir / "data"
        self.log_file = workdir / "alertmanager.log"
        self.extra_args = extra_args + ((f"--web.config.file={web_config}",)
                                        if web_config is not None else ())
        self.port = port or free_port()
        self.url = f"{'https' if tls_ca else 'http'}://127.0.0.1:{self.port}"
        # how this fixture itself talks to it (readiness, the API): the CA and the user
        self._context = ssl.create_default_context(cafile=tls_ca) if tls_ca else None
        if self._context is not None and client_cert is not None:
            self._context.load_cert_chain(*client_cert)
        self._headers = {"Authorization": "Basic " + base64.b64encode(
            ":".join(auth).encode()).decode()} if auth else {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start on the same port and storage as before; return once /-/ready answers."""
        if self.running:
            return
        # The empty cluster address matters: otherwise Alertmanager binds *:9094
        # and holds notifications ~10 s while gossip settles.
        args = [self.binary, f"--config.file={self.config_file}",
                f"--storage.path={self.storage}", f"--web.listen-address=127.0.0.1:{self.port}",
                f"--web.external-url={self.url}", "--cluster.listen-address=",
                *self.extra_args]
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running:
                self._fail("exited during start-up")
            try:
                with self._open(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self._fail(f"not ready within {READY_TIMEOUT} s")

    def _fail(self, what: str) -> None:
        self.stop()
        tail = self.log_file.read_text(errors="replace")[-2000:]
        pytest.fail(f"Alertmanager on port {self.port} {what}; log:\n{tail}", pytrace=False)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and wait for it: the port is free after."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def get_alerts(self, **filters: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` (e.g. ``active="true"``, ``silenced="false"``)."""
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        with self._open(f"{self.url}/api/v2/alerts?{query}", timeout=5) as r:
            return list(json.loads(r.read()))

    def _open(self, url: str, timeout: float) -> Any:
        request = urllib.request.Request(url, headers=self._headers)
        return urllib.request.urlopen(request, timeout=timeout, context=self._context)

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@pytest.fixture(name="webhook")
def webhook_fixture() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture(name="alertmanager_factory")
def alertmanager_factory_fixture(webhook: WebhookReceiver,
                         tmp_path: Path) -> Iterator[Callable[..., Alertmanager]]:
    """Start Alertmanagers notifying ``webhook``; each is stopped at teardown."""
    started: list[Alertmanager] = []

    def make(**kwargs: Any) -> Alertmanager:
        am = Alertmanager(tmp_path / f"alertmanager-{len(started)}", webhook.url, **kwargs)
        started.append(am)
        am.start()
        return am

    try:
        yield make
    finally:
        for am in started:
            am.stop()


@pytest.fixture(name="alertmanager")
def alertmanager_fixture(alertmanager_factory: Callable[..., Alertmanager]) -> Alertmanager:
    return alertmanager_factory()
