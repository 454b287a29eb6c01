"""Who can reach /metrics: the web config file wired into ``residency-monitor run``.

A real daemon (capturing in a namespace pair) serves its metrics under an
exporter-toolkit web config given in its configuration file; the endpoint
answers only the basic-auth user over TLS, a broken edit is refused (logged
with its file:line, counted) and the previous file stays in force, and a bad
file or a second source of TLS settings at start is exit 2 with the reason.
The warning for an endpoint open to every interface is checked for each
combination a web config can make.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from certs import certificates
from daemon_fixture import DaemonProcess
from prometheus_client import CollectorRegistry
from prometheus_fixture import free_port

from residency_monitor.exporter import Exporter
from residency_monitor.webconfig import WebConfigFile

PASSWORD = "scrape me, gently"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
RUN = [sys.executable, "-m", "residency_monitor", "run"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    return certificates(tmp_path_factory.mktemp("certs"))


def _get(url: str, ctx: ssl.SSLContext | None, auth: tuple[str, str] | None = None
         ) -> tuple[int, bytes]:
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10,
                                    context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _web_config(path: Path, certs: dict[str, str], users: str = f"  prometheus: {HASH}\n"
                ) -> Path:
    path.write_text(f"tls_server_config:\n  cert_file: {certs['server']}\n"
                    f"  key_file: {certs['server_key']}\nbasic_auth_users:\n{users}")
    return path


def test_the_daemon_serves_metrics_only_to_the_basic_auth_user(pair, certs, tmp_path):
    web = _web_config(tmp_path / "web.yml", certs)
    daemon = DaemonProcess(tmp_path / "daemon", ["capture:", f"  interfaces: [{pair.dev_b}]",
                                                 f"  netns: {pair.b}"])
    daemon.config.write_text(daemon.config.read_text().replace(
        "metrics:\n", f"metrics:\n  web_config_file: {web}\n", 1))
    daemon.start()
    url = f"https://127.0.0.1:{daemon.port}/metrics"
    ctx = ssl.create_default_context(cafile=certs["ca"])
    try:
        assert _get(url, ctx)[0] == 401
        assert _get(url, ctx, ("prometheus", "wrong"))[0] == 401
        assert _get(url, ctx, ("grafana", PASSWORD))[0] == 401
        status, body = _get(url, ctx, ("prometheus", PASSWORD))
        assert status == 200 and b"residency_build_info" in body
        with pytest.raises(OSError):    # no plain HTTP beside it (the TLS server hangs up)
            _get(f"http://127.0.0.1:{daemon.port}/metrics", None)

        # A broken edit: refused, logged with file:line, counted; the old users still apply.
        web.write_text(f"basic_auth_users:\n  prometheus: {HASH}\n  admin: hunter2\n")
        os.utime(web, ns=(time.time_ns() + 10**9,) * 2)
        assert _get(url, ctx)[0] == 401
        status, body = _get(url, ctx, ("prometheus", PASSWORD))
        assert status == 200 and b"residency_web_config_refused_total 1.0" in body
        refused = [e for e in daemon.log_events() if e.get("event") == "web_config_reload"]
        assert len(refused) == 1 and refused[0]["result"] == "failure"
        assert any(f"{web}:3" in line and "not a plain password" in line
                   for line in refused[0]["errors"])
        assert PASSWORD not in daemon.log_text() and HASH not in daemon.log_text()
    finally:
        assert daemon.stop() == 0


def test_a_bad_web_config_at_start_is_exit_2_with_file_and_line(tmp_path, certs):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prometheus: not-a-bcrypt-hash\n")
    res = subprocess.run([*RUN, "--web.config.file", str(web), "--interface", "no-such-if0",
                          "--web.listen-address", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr        # refused before the capture is even tried
    assert f"{web}:2" in res.stderr and "not a plain password" in res.stderr

    res = subprocess.run([*RUN, "--web.config.file", str(tmp_path / "absent.yml"),
                          "--interface", "no-such-if0"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "absent.yml" in res.stderr


def test_web_config_and_certificate_options_are_refused_together(tmp_path, certs):
    web = _web_config(tmp_path / "web.yml", certs)
    both = tmp_path / "both.yaml"
    both.write_text(f"metrics:\n  tls_cert_file: {certs['server']}\n"
                    f"  tls_key_file: {certs['server_key']}\n  web_config_file: {web}\n")
    res = subprocess.run([*RUN, "--config", str(both)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert f"{both}:2: metrics.tls_cert_file: not with web_config_file" in res.stderr
    assert f"{both}:3: metrics.tls_key_file: not with web_config_file" in res.stderr

    certs_only = tmp_path / "certs.yaml"
    certs_only.write_text(f"metrics:\n  tls_cert_file: {certs['server']}\n"
                          f"  tls_key_file: {certs['server_key']}\n")
    res = subprocess.run([*RUN, "--config", str(certs_only), "--web.config.file", str(web)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "configure TLS in one place" in res.stderr


@pytest.mark.parametrize("tls, users, warned", [
    (False, False, "without TLS"),
    (False, True, "without TLS"),            # basic auth in clear text protects nothing
    (True, False, "without authentication"),
    (True, True, None),
])
def test_all_interfaces_warning_covers_the_web_config(tls, users, warned, tmp_path, certs,
                                                      caplog):
    lines = []
    if tls:
        lines += [f"tls_server_config:\n  cert_file: {certs['server']}\n"
                  f"  key_file: {certs['server_key']}\n"]
    if users:
        lines += [f"basic_auth_users:\n  prometheus: {HASH}\n"]
    web = tmp_path / "web.yml"
    web.write_text("".join(lines))
    logger = logging.getLogger("test-metrics-access")
    exp = Exporter(CollectorRegistry(), address="0.0.0.0", port=0, logger=logger,
                   web_config=WebConfigFile(web))
    with caplog.at_level(logging.INFO, logger=logger.name):
        exp.start()
        exp.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0] and "all interfaces" in warnings[0]
