"""sd_notify: telling systemd that the daemon is ready, alive, reloading or stopping.

systemd (``Type=notify``) hands the service an AF_UNIX datagram socket in
``$NOTIFY_SOCKET``; each datagram is newline-separated ``KEY=value`` fields
(``READY=1``, ``WATCHDOG=1``, ``STATUS=...``, ``STOPPING=1``). A leading "@"
names a socket in the abstract namespace (the "@" stands for a NUL byte).
Outside systemd the variable is unset and every call is a no-op returning
False, so the daemon calls these unconditionally. See sd_notify(3) and
sd_watchdog_enabled(3); this is the protocol, without libsystemd.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "ready", "reloading", "status", "stopping", "watchdog", "watchdog_interval"]


def _address() -> str | bytes | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        # Abstract namespace: a NUL byte, then the name (no terminator).
        return b"\0" + os.fsencode(path[1:])
    if path.startswith("/"):
        return path
    # Unset, empty, or a form we do not speak (vsock:, relative): not systemd's socket.
    return None


def notify(**fields: object) -> bool:
    """Send ``KEY=value`` fields to systemd; True if a datagram was sent.

    ``notify(READY=1, STATUS="capturing on eth0")``. Values must not contain
    newlines (it would start another field): they are replaced by spaces.
    Never raises: a daemon must not die because its supervisor went away.
    """
    address = _address()
    if address is None or not fields:
        return False
    message = "\n".join(
        f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()
    )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.send(message.encode())
    except OSError:
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Start-up is done: capture sockets open, metrics endpoint listening."""
    if status is None:
        return notify(READY=1)
    return notify(READY=1, STATUS=status)


def status(text: str) -> bool:
    """A one-line state shown by ``systemctl status``."""
    return notify(STATUS=text)


def watchdog() -> bool:
    """The main loop is alive (send at about half of watchdog_interval())."""
    return notify(WATCHDOG=1)


def reloading() -> bool:
    """A reload (SIGHUP) began; call ready() when it is done."""
    return notify(RELOADING=1)


def stopping() -> bool:
    """Shutdown began (flushing flows, draining alerts)."""
    return notify(STOPPING=1)


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds if systemd expects pings from us, else None.

    From ``$WATCHDOG_USEC``; when ``$WATCHDOG_PID`` is set it must be our
    process id (the variables may have been inherited by a child).
    """
    env = os.environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000
