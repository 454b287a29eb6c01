"""sd_notify against real AF_UNIX datagram sockets, as systemd's NOTIFY_SOCKET is."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from residency_monitor import sdnotify


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket in tmp_path, named in NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def fields(datagram: bytes) -> list[str]:
    return datagram.decode().split("\n")


def test_ready_sends_ready(receiver: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert fields(receiver.recv(4096)) == ["READY=1"]


def test_ready_with_status_is_one_datagram(receiver: socket.socket) -> None:
    assert sdnotify.ready("capturing on eth0, eth1")
    assert fields(receiver.recv(4096)) == ["READY=1", "STATUS=capturing on eth0, eth1"]


def test_each_helper_sends_its_field(receiver: socket.socket) -> None:
    assert sdnotify.status("3 flows, 0 violations")
    assert sdnotify.watchdog()
    assert sdnotify.reloading()
    assert sdnotify.stopping()
    got = [receiver.recv(4096) for _ in range(4)]
    assert got == [b"STATUS=3 flows, 0 violations", b"WATCHDOG=1", b"RELOADING=1", b"STOPPING=1"]


def test_notify_fields_in_order_and_newlines_cannot_inject(receiver: socket.socket) -> None:
    assert sdnotify.notify(STATUS="line one\nREADY=1", ERRNO=0)
    assert fields(receiver.recv(4096)) == ["STATUS=line one READY=1", "ERRNO=0"]


def test_utf8_status(receiver: socket.socket) -> None:
    assert sdnotify.status("澳門 office gateway")
    assert receiver.recv(4096).decode() == "STATUS=澳門 office gateway"


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"residency-monitor-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        data = sock.recv(4096)
    assert data == b"READY=1"


def test_abstract_name_is_not_a_file_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "@name" must not be taken as a relative path: a file socket named "@x" in the
    # current directory receives nothing.
    monkeypatch.chdir(tmp_path)
    name = f"rm-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as decoy:
        decoy.bind("@" + name)
        decoy.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready() is False  # nobody listens in the abstract namespace
        with pytest.raises(BlockingIOError):
            decoy.recv(4096)


@pytest.mark.parametrize("value", [None, "", "relative/notify.sock"])
def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.ready() is False
    assert sdnotify.status("x") is False
    assert sdnotify.watchdog() is False
    assert sdnotify.stopping() is False


def test_nothing_to_send(receiver: socket.socket) -> None:
    assert sdnotify.notify() is False


def test_vanished_supervisor_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.ready() is False
    # A socket file nobody reads any more (the receiver closed): refused, not raised.
    path = tmp_path / "closed.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert sdnotify.watchdog() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("15000000", "self", 15.0),
        ("500000", "self", 0.5),
        ("30000000", "other", None),  # inherited from a parent: not ours to ping
        ("30000000", "x", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(key, value)
    assert sdnotify.watchdog_interval() == expected
