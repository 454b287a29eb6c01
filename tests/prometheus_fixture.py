"""A real Prometheus server for tests: start it on a free port, scrape targets, query it.

Exporter, alerting-rule and dashboard tests want the real thing rather than
a parser of our own: what Prometheus accepts, how it negotiates the format,
whether it can complete a TLS handshake with us. Debian's ``prometheus``
(2.42) is what ``make test`` installs; without it these tests fail and say
how to install it (they never skip: the exporter is part of the product).

Use it as a context manager, or through the ``prometheus_factory`` fixture
(import it into a test module: ``from prometheus_fixture import prometheus_factory``)::

    with running_prometheus(tmp_path, [scrape_config("exporter", ["127.0.0.1:8749"])]) as prom:
        prom.wait_for('up{job="exporter"} == 1')
        prom.value('sum(residency_flows_total)')

Scrape and evaluation intervals are 1 s, so a target is scraped within
about a second of the server becoming ready.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Prometheus", "Sample", "find_binary", "free_port", "prometheus_factory",
           "running_prometheus", "scrape_config"]

INSTALL_HINT = ("`make test` installs it (Debian package `prometheus`); by hand: "
                "apt-get install -y --no-install-recommends prometheus")
START_TIMEOUT = 30.0

Sample = tuple[dict[str, str], float]


def find_binary(name: str = "prometheus") -> str:
    """Path of a Prometheus binary (prometheus, promtool); fails the test when absent."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file()
                                  else None)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {INSTALL_HINT}", pytrace=False)
    return path


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_config(job: str, targets: Sequence[str], *, scheme: str = "http",
                  tls_config: dict[str, Any] | None = None, metrics_path: str = "/metrics",
                  **extra: Any) -> dict[str, Any]:
    """One ``scrape_configs`` entry with static targets (``host:port``)."""
    cfg: dict[str, Any] = {"job_name": job, "scheme": scheme, "metrics_path": metrics_path,
                           "static_configs": [{"targets": list(targets)}]}
    if tls_config is not None:
        cfg["tls_config"] = tls_config
    cfg.update(extra)
    return cfg


class Prometheus:
    """One Prometheus process with its own config and storage under ``workdir``."""

    def __init__(self, workdir: Path, scrape_configs: Sequence[dict[str, Any]], *,
                 rule_files: Sequence[str | Path] = (), alertmanagers: Sequence[str] = (),
                 interval: str = "1s", extra_config: dict[str, Any] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "scrape_configs": list(scrape_configs),
            "rule_files": [str(p) for p in rule_files],
        }
        if alertmanagers:
            config["alerting"] = {"alertmanagers": [
                {"static_configs": [{"targets": list(alertmanagers)}]}]}
        config.update(extra_config or {})
        # JSON is YAML: no dependency on how a YAML writer quotes things
        self.config_path.write_text(json.dumps(config, indent=2))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> Prometheus:
        """Start and wait until ready; fails the test with Prometheus's log if it cannot."""
        binary = find_binary("prometheus")
        check = subprocess.run([find_binary("promtool"), "check", "config",
                                str(self.config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            pytest.fail(f"promtool rejects the test's Prometheus config:\n{check.stdout}"
                        f"{check.stderr}", pytrace=False)
        for _attempt in range(3):        # the free port may be taken between probe and bind
            self.port = free_port()
            self._spawn(binary)
            if self._wait_ready(timeout):
                return self
            self.stop()
            if "address already in use" not in self.log():
                break
        pytest.fail(f"Prometheus did not become ready on {self.url}:\n{self.log()[-3000:]}",
                    pytrace=False)

    def _spawn(self, binary: str) -> None:
        storage = self.workdir / "data"
        storage.mkdir(exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={storage}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- the HTTP API

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` member, or an AssertionError with the error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus API {path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[Sample]:
        """An instant query: ``[(labels, value), ...]`` (a scalar comes as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise AssertionError(f"{expr}: expected an instant vector, got {data['resultType']}")
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def value(self, expr: str) -> float | None:
        """The single value of a query (None for no result; more than one is an error)."""
        result = self.query(expr)
        if len(result) > 1:
            raise AssertionError(f"{expr}: {len(result)} series, expected one: {result}")
        return result[0][1] if result else None

    def wait_for(self, expr: str, predicate: Callable[[list[Sample]], bool] = bool,
                 timeout: float = 20.0) -> list[Sample]:
        """Poll a query until ``predicate(result)`` holds; fails with targets' state if not."""
        deadline = time.monotonic() + timeout
        result: list[Sample] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.2)
        raise AssertionError(f"after {timeout:.0f} s, {expr!r} gave {result}; "
                             f"targets: {self.target_health()}")

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def target_health(self) -> list[tuple[str, str, str]]:
        """(job, health, last error) of every active target: what to print when a test fails."""
        return [(t["labels"].get("job", ""), t["health"], t.get("lastError", ""))
                for t in self.targets()]


@contextmanager
def running_prometheus(workdir: Path, scrape_configs: Sequence[dict[str, Any]],
                       **kwargs: Any) -> Iterator[Prometheus]:
    """A started Prometheus, stopped on exit."""
    prom = Prometheus(workdir, scrape_configs, **kwargs)
    try:
        yield prom.start()
    finally:
        prom.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Start Prometheus servers in a test; all are stopped at its end."""
    started: list[Prometheus] = []

    def start(scrape_configs: Sequence[dict[str, Any]], **kwargs: Any) -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus-{len(started)}", scrape_configs, **kwargs)
        started.append(prom)
        return prom.start()

    yield start
    for prom in started:
        prom.stop()
