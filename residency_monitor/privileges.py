"""Give up privileges once the capture sockets are open: no capability left, maybe another user.

CAP_NET_RAW is only needed to create AF_PACKET sockets (and CAP_SYS_ADMIN,
as root, to enter a capture network namespace); reading them, the metrics
endpoint, Alertmanager and the audit log need none. So once the sockets are
open the daemon drops every capability from the effective, permitted and
inheritable sets and the ambient set, and, if it can (CAP_SETPCAP, i.e.
started as root), empties the bounding set so that uid 0 cannot get them
back by executing a program; ``no_new_privs`` is set for the same reason. A
bug in a packet parser then gets a process that can read its own sockets
and files and nothing else. The price: an interface that disappears cannot
be reopened, so the daemon exits (see ``daemon.EXIT_CAPTURE_LOST``) and its
supervisor starts it afresh.

Started as root with a user configured (``run --user`` or ``user:``), it
also switches to that user and its groups; the open sockets stay usable.
Without one, root keeps uid 0 with no capabilities (a warning says so).

Capabilities belong to threads, not processes (``capset`` and the ``prctl``
calls change only the calling thread, while glibc's ``setresuid`` changes
every thread), so this must run before the first thread is started:
threads inherit their creator's sets. ctypes and libc do it; the only
PyPI package for it (python-prctl) is a C extension that needs libcap's
headers to build, for four system calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
from dataclasses import dataclass

__all__ = ["PrivilegeError", "Dropped", "capability_sets", "drop_privileges", "cap_names"]

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_SETPCAP = 8

#: capability numbers -> names (linux/capability.h), for the log
CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore")
_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


class PrivilegeError(Exception):
    """Privileges could not be dropped as configured (an unknown user, a refused call)."""


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


@dataclass(frozen=True)
class Dropped:
    """What :func:`drop_privileges` did, for the start-up log line."""

    before: dict[str, int]      # CapEff, CapPrm ... as they were
    after: dict[str, int]
    uid: int
    gid: int
    user: str | None            # the user switched to, if any
    warnings: tuple[str, ...]   # what could not be done (e.g. capset refused by seccomp)


def capability_sets(pid: int | str = "self") -> dict[str, int]:
    """The capability sets of a process (or ``"thread-self"``) from /proc, as bit masks."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in _SETS:
                out[key] = int(value.strip(), 16)
    return out


def cap_names(mask: int) -> list[str]:
    """``cap_net_raw``-style names of the bits set in ``mask``."""
    return [f"cap_{CAP_NAMES[i]}" if i < len(CAP_NAMES) else f"cap_{i}"
            for i in range(64) if mask >> i & 1]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(libc: ctypes.CDLL, *args: int) -> int:
    rc = int(libc.prctl(*(ctypes.c_ulong(a) for a in args), *(ctypes.c_ulong(0),)
                        * (5 - len(args))))
    return rc if rc >= 0 else -ctypes.get_errno()


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(CAP_NAMES) - 1


def _switch_user(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"no such user: {name}") from None
    if os.geteuid() != 0:
        if os.geteuid() == entry.pw_uid:
            return entry.pw_uid, entry.pw_gid        # already that user (e.g. under systemd)
        raise PrivilegeError(f"cannot switch to user {name}: not started as root")
    try:
        os.initgroups(name, entry.pw_gid)            # its supplementary groups, nothing of root's
        os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
        os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to user {name}: {exc.strerror}") from None
    return entry.pw_uid, entry.pw_gid


def drop_privileges(user: str | None = None) -> Dropped:
    """Drop every capability of this (single-threaded) process; switch to ``user`` if given.

    Raises PrivilegeError for an unknown user or a switch that is impossible;
    a capability call refused by a seccomp filter is a warning in the result,
    as the process keeps running with what it has (the log says what).
    """
    libc = _libc()
    before = capability_sets()
    warnings: list[str] = []
    if before.get("CapEff", 0) >> CAP_SETPCAP & 1:
        # Only with CAP_SETPCAP: empty the bounding set, so that no exec can regain anything.
        for cap in range(_last_cap() + 1):
            if _prctl(libc, PR_CAPBSET_READ, cap) == 1:
                rc = _prctl(libc, PR_CAPBSET_DROP, cap)
                if rc < 0:
                    warnings.append(f"bounding set: dropping cap {cap}: {os.strerror(-rc)}")
                    break
    uid, gid = os.getuid(), os.getgid()
    if user:
        uid, gid = _switch_user(user)
    rc = _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    if rc < 0:
        warnings.append(f"no_new_privs: {os.strerror(-rc)}")
    rc = _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    if rc < 0 and rc != -22:    # EINVAL: a kernel before 4.3 has no ambient set
        warnings.append(f"ambient set: {os.strerror(-rc)}")
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()        # all zero: nothing effective, permitted or inheritable
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        warnings.append(f"capset: {os.strerror(err)}"
                        + (" (a seccomp filter refuses capset: allow it, e.g. "
                           "SystemCallFilter=capset in the unit)" if err == 1 else ""))
    after = capability_sets()
    left = [k for k in ("CapEff", "CapPrm", "CapInh", "CapAmb") if after.get(k)]
    if left and not warnings:
        warnings.append(f"still set: {', '.join(left)}")
    return Dropped(before, after, uid, gid, user, tuple(warnings))
