"""``residency-monitor run`` as a subprocess: its configuration, log and records.

Shared by the end-to-end tests and the alert-latency benchmark, which both
run the real daemon (capturing in a network namespace of their own) rather
than the engine in-process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_fixture import free_port

START_TIMEOUT = 20.0


class DaemonError(RuntimeError):
    """The daemon exited or did not start; the message carries its log."""


class DaemonProcess:
    """One daemon with its own configuration file, JSON log and flow-record file.

    ``config`` holds the YAML lines of everything but the metrics address and
    the records file, which are filled in here (a free port, the work dir), and
    the audit log, which goes to the work dir too unless ``config`` says where:
    a test must never write into the gateway's own /var/lib audit log.
    """

    def __init__(self, workdir: Path, config: list[str], name: str = "daemon"):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.records = workdir / "records.jsonl"
        self.log = workdir / "daemon.log"
        self.config = workdir / "config.yaml"
        lines = [*config, "metrics:", "  listen_address: 127.0.0.1", f"  port: {self.port}",
                 f"records: {self.records}", "log: {format: json, level: info}"]
        if not any(line.startswith("audit:") for line in config):
            lines.append(f"audit: {{path: {workdir / 'audit'}}}")
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "residency_monitor", "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonError(f"{self.name} exited ({self.proc.returncode}):\n"
                                  f"{self.log_text()}")
            if '"event": "start"' in self.log_text():
                return
            time.sleep(0.05)
        raise DaemonError(f"{self.name} did not start:\n{self.log_text()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (open flows are flushed to the records) and the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Teardown after a failure: no daemon outlives its test or benchmark."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def log_events(self) -> list[dict]:
        return [json.loads(line) for line in self.log_text().splitlines()
                if line.startswith("{")]

    def final_records(self) -> list[dict]:
        lines = self.records.read_text().splitlines() if self.records.exists() else []
        return [r for r in map(json.loads, lines) if r["final"]]


def wait_until(predicate: Callable[[], object], timeout: float, step: float = 0.2) -> bool:
    """Poll ``predicate`` until it is truthy (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def scrape(port: int) -> str:
    """The daemon's /metrics exposition on 127.0.0.1:``port``, as text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def scrape_samples(port: int) -> dict[str, float]:
    """The exposition as ``{'name{labels}': value}`` (comment lines left out)."""
    out: dict[str, float] = {}
    for line in scrape(port).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
