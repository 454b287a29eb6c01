"""The running daemon holds no capability, and started as root with ``user:`` is that user.

The real ``residency-monitor run`` is started as root (as ``make run`` does)
in a namespace pair; while it captures the sample's traffic, every thread's
capability sets and ids are read from /proc. Capabilities are per thread, so
a thread started before the drop would keep them: every task is checked.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_fixture import DaemonProcess
from daemon_fixture import scrape as _metrics
from daemon_fixture import wait_until as _wait
from netns_fixture import NetnsPair

from residency_monitor.privileges import cap_names, capability_sets

CLEARED = ("CapEff", "CapPrm", "CapInh", "CapAmb")


@pytest.fixture
def system_user() -> Iterator[str]:
    """A throwaway system user (no home, no shell), removed afterwards."""
    name = f"rmtest{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="rmtest-priv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tasks(pid: int) -> dict[str, dict[str, int]]:
    """Every thread's capability sets and uids (``Uid``: real, effective, saved, fs)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        sets = capability_sets(f"{pid}/task/{tid}")
        with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(("Uid:", "Gid:", "Name:")):
                    key, _, value = line.partition(":")
                    sets[key] = value.split()  # type: ignore[assignment]
        out[tid] = sets
    return out


def _config(pair: NetnsPair, *extra: str) -> list[str]:
    return ["capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
            "flows: {tcp_idle: 2, tcp_closed: 1, udp_idle: 1}", *extra]


def _privileges_event(daemon: DaemonProcess) -> dict:
    """The log line saying what was dropped (written just after the start line)."""
    assert _wait(lambda: any(e.get("event") == "privileges" for e in daemon.log_events()), 5)
    return next(e for e in daemon.log_events() if e.get("event") == "privileges")


def _violations(port: int) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in _metrics(port).splitlines()
               if line.startswith("residency_violations_total{"))


def test_root_daemon_keeps_uid_0_without_any_capability(pair, sample_replay, tmp_path):
    assert capability_sets()["CapEff"] != 0, "the test itself must run as root"
    daemon = DaemonProcess(tmp_path / "daemon", _config(pair))
    daemon.start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        tasks = _tasks(pid)
        assert len(tasks) >= 2       # the capture loop and at least the exporter's thread
        for tid, sets in tasks.items():
            for key in CLEARED:
                assert sets[key] == 0, (tid, key, cap_names(sets[key]))
            assert sets["CapBnd"] == 0, cap_names(sets["CapBnd"])   # no exec can regain them
            assert sets["Uid"] == ["0"] * 4
        drop = _privileges_event(daemon)
        assert drop["level"] == "warning"
        assert "cap_net_raw" in drop["dropped"] and "cap_sys_admin" in drop["dropped"]
        assert drop["uid"] == 0 and "user:" in drop["msg"]

        # ... and it still captures and judges: the sample's violations are counted
        pair.replay(sample_replay, pps=2000)
        assert _wait(lambda: _violations(daemon.port) >= 9, 30), _metrics(daemon.port)
        assert all(t[k] == 0 for t in _tasks(pid).values() for k in CLEARED)
    finally:
        assert daemon.stop() == 0
    assert {r["dst_country"] for r in daemon.final_records()
            if r["verdict"] == "violation"} >= {"US", "CN", "DE"}


@pytest.mark.parametrize("who", ["throwaway", "nobody"])
def test_root_daemon_switches_to_the_configured_user(who, pair, sample_replay, open_dir,
                                                     request):
    user = request.getfixturevalue("system_user") if who == "throwaway" else "nobody"
    entry = pwd.getpwnam(user)
    audit = open_dir / "audit"
    daemon = DaemonProcess(open_dir / "daemon", _config(pair, f"user: {user}",
                                                         f"audit: {{path: {audit}}}"))
    daemon.start()
    try:
        assert daemon.proc is not None
        for tid, sets in _tasks(daemon.proc.pid).items():
            assert sets["Uid"] == [str(entry.pw_uid)] * 4, tid
            assert sets["Gid"] == [str(entry.pw_gid)] * 4, tid
            assert all(sets[k] == 0 for k in CLEARED), (tid, sets)
        drop = _privileges_event(daemon)
        assert drop["uid"] == entry.pw_uid and drop["msg"] == "privileges dropped"
        pair.replay(sample_replay, pps=2000)
        assert _wait(lambda: _violations(daemon.port) >= 9, 30), _metrics(daemon.port)
    finally:
        assert daemon.stop() == 0
    # the audit log was handed over and written by the user, through to the stop entry
    assert audit.stat().st_uid == entry.pw_uid
    segments = sorted(audit.glob("audit-*.jsonl*"))
    assert segments and all(s.stat().st_uid == entry.pw_uid for s in segments)
    assert '"stop"' in segments[-1].read_text()


def test_unknown_user_is_a_configuration_error(pair, tmp_path):
    daemon = DaemonProcess(tmp_path / "daemon", _config(pair, "user: no-such-user-rmtest"))
    with pytest.raises(Exception, match="no such user: no-such-user-rmtest"):
        daemon.start()
    assert daemon.proc is not None and daemon.proc.wait(10) == 2


def test_a_vanished_interface_ends_the_run_with_exit_4_for_a_restart(pair, tmp_path):
    daemon = DaemonProcess(tmp_path / "daemon", _config(pair))
    daemon.start()
    assert daemon.proc is not None
    subprocess.run(["ip", "-n", pair.b, "link", "del", pair.dev_b], check=True)
    assert daemon.proc.wait(30) == 4     # not 3: systemd's RestartPreventExitStatus=2 3
    lost = [e for e in daemon.log_events() if e.get("event") == "capture_lost"]
    assert lost and pair.dev_b in lost[0]["msg"] and "restarted" in lost[0]["msg"]
    assert [e.get("event") for e in daemon.log_events()][-1] == "stop"
