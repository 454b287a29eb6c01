"""The deployment files, checked by the tools that will read them.

Prometheus config and rules (promtool, with unit tests of every alert),
Alertmanager config (amtool, and a real Alertmanager for the inhibit rule),
the systemd unit (systemd-analyze verify and security), the sysusers and
tmpfiles files (applied to a scratch root), and Python itself run under the
unit's system call filter, MemoryDenyWriteExecute=, address families,
capabilities and /proc. The tools come from Debian packages that `make test`
installs (prometheus, prometheus-alertmanager, systemd; util-linux is always
there); a missing one fails the test rather than skipping it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "configs" / "prometheus"
PROMETHEUS_YML = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "rules" / "residency.rules.yml"
RULE_TESTS = PROMETHEUS / "rules" / "residency.rules.test.yml"
ALERTMANAGER_YML = ROOT / "configs" / "alertmanager" / "alertmanager.yml"
UNIT = ROOT / "systemd" / "residency-monitor.service"
SYSUSERS = ROOT / "systemd" / "residency-monitor.sysusers"
TMPFILES = ROOT / "systemd" / "residency-monitor.tmpfiles"

# Sample names a metric family becomes in the exposition format.
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_info")


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: `make test` installs it (Debian package {package})")
    return path


def run(*argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values in order (a unit may repeat a key), ignoring comments and sections."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


# --- Prometheus ---------------------------------------------------------------


def test_promtool_check_config_in_the_install_layout(tmp_path: Path) -> None:
    # Installed as /etc/prometheus/prometheus.yml + /etc/prometheus/rules/: the
    # rule path is relative to the config's directory, so a copy of that layout
    # checks exactly what an install gets.
    promtool = tool("promtool", "prometheus")
    etc = tmp_path / "prometheus"
    (etc / "rules").mkdir(parents=True)
    shutil.copy(PROMETHEUS_YML, etc / "prometheus.yml")
    shutil.copy(RULES, etc / "rules" / RULES.name)
    result = run(promtool, "check", "config", str(etc / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = run(tool("promtool", "prometheus"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_test_rules() -> None:
    result = run(tool("promtool", "prometheus"), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_use_only_exported_metrics_and_are_documented() -> None:
    from residency_monitor.metrics import METRIC_NAMES  # the daemon's metric catalogue

    exported = {name + suffix for name in METRIC_NAMES for suffix in SUFFIXES}
    rules = _rules()
    assert {r["alert"] for r in rules} == {
        "ResidencyViolationsDetected", "ResidencyCaptureDropping", "ResidencyGeoDatabaseStale",
        "ResidencyPolicyReloadFailed", "ResidencyAlertmanagerUnreachable",
        "ResidencyAuditLogFailing", "ResidencyMonitorDown"}
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"(?:[A-Z][a-z0-9]*)+", name), f"{name} is not CamelCase"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description"} <= rule["annotations"].keys(), name
        used = set(re.findall(r"\bresidency_[a-z_]+", rule["expr"]))
        assert used <= exported, f"{name} uses metrics not exported: {used - exported}"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"]}
    tests = yaml.safe_load(RULE_TESTS.read_text())
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == alerts
    assert silent == alerts


def test_prometheus_scrapes_the_daemon_with_site_and_instance() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "residency-monitor"]
    (targets,) = job["static_configs"]
    assert targets["targets"] == ["127.0.0.1:8749"]
    assert {"site", "instance"} <= targets["labels"].keys()
    assert config["rule_files"] == ["rules/residency.rules.yml"]


# --- Alertmanager -------------------------------------------------------------


def test_amtool_check_config() -> None:
    result = run(tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["alertname=ResidencyViolation", "severity=critical", "rule=residency"], "compliance-webhook"),
    (["alertname=ResidencyMonitorDown", "severity=critical"], "compliance-webhook"),
    (["alertname=ResidencyCaptureDropping", "severity=warning"], "ops-webhook"),
    (["alertname=SomethingElse"], "ops-webhook"),
])
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    amtool = tool("amtool", "prometheus-alertmanager")
    result = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_monitor_down_inhibits_the_gateways_operational_alerts(tmp_path: Path) -> None:
    binary = tool("prometheus-alertmanager", "prometheus-alertmanager")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, f"--config.file={ALERTMANAGER_YML}", f"--storage.path={tmp_path}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        alerts = [
            {"labels": {"alertname": "ResidencyMonitorDown", "severity": "critical",
                        "instance": "gw1"}},
            {"labels": {"alertname": "ResidencyCaptureDropping", "severity": "warning",
                        "instance": "gw1", "interface": "eth0"}},
            {"labels": {"alertname": "ResidencyCaptureDropping", "severity": "warning",
                        "instance": "gw2", "interface": "eth0"}},
            # As the daemon pushes it, with `instance` from its configured labels.
            {"labels": {"alertname": "ResidencyViolation", "severity": "critical",
                        "instance": "gw1", "rule": "residency", "zone": "finance",
                        "dst_country": "US"}},
        ]
        request = urllib.request.Request(f"{base}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).read()
        deadline = time.monotonic() + 10
        while True:  # the inhibitor learns of new alerts asynchronously
            got = json.loads(urllib.request.urlopen(f"{base}/api/v2/alerts", timeout=5).read())
            state = {(a["labels"]["alertname"], a["labels"]["instance"]): a["status"]["state"]
                     for a in got}
            if (len(state) == 4 and "suppressed" in state.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert state == {
            ("ResidencyMonitorDown", "gw1"): "active",
            ("ResidencyCaptureDropping", "gw1"): "suppressed",  # its monitor is down
            ("ResidencyCaptureDropping", "gw2"): "active",      # another gateway's
            ("ResidencyViolation", "gw1"): "active",            # violations never hidden
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


# --- systemd ------------------------------------------------------------------


def test_unit_keeps_its_contract_with_the_daemon() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [
        "/usr/bin/residency-monitor run --config /etc/residency-monitor/config.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert set(s["RestartPreventExitStatus"][0].split()) == {"2", "3"}
    assert s["User"] == ["residency-monitor"]
    assert s["StateDirectory"] == s["ConfigurationDirectory"] == ["residency-monitor"]
    assert s["AmbientCapabilities"] == s["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    assert s["MemoryDenyWriteExecute"] == ["yes"]
    assert "IPAddressDeny" not in s  # it must reach Alertmanager


def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    # verify refuses a unit whose ExecStart binary does not exist, and the
    # daemon is not installed here: check a copy whose ExecStart names an
    # existing executable (this Python) and is otherwise byte-for-byte the unit.
    # verify exits 0 even on unknown keys, so any output on stderr fails.
    analyze = tool("systemd-analyze", "systemd")
    original = UNIT.read_text()
    copy = original.replace("ExecStart=/usr/bin/residency-monitor ",
                            f"ExecStart={sys.executable} ", 1)
    changed = [a for a, b in zip(original.splitlines(), copy.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0].startswith("ExecStart=")
    unit = tmp_path / UNIT.name
    unit.write_text(copy)
    result = run(analyze, "verify", str(unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_systemd_analyze_security_exposure_at_most_2() -> None:
    analyze = tool("systemd-analyze", "systemd")
    result = run(analyze, "security", "--offline=true", "--threshold=20", str(UNIT))
    assert result.returncode == 0, result.stdout + result.stderr
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert score is not None, result.stdout
    assert float(score.group(1)) <= 2.0


def test_sysusers_and_tmpfiles_create_the_user_and_directories(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers", "systemd")
    tmpfiles = tool("systemd-tmpfiles", "systemd")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = run(sysusers, f"--root={root}", str(SYSUSERS))
    assert result.returncode == 0, result.stderr
    (entry,) = [line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()
                if line.startswith("residency-monitor:")]
    uid, gid = int(entry[2]), int(entry[3])
    assert 0 < uid < 1000 and entry[5] == "/var/lib/residency-monitor"
    assert entry[6].endswith("nologin")

    result = run(tmpfiles, f"--root={root}", "--create", str(TMPFILES))
    assert result.returncode == 0, result.stderr
    state = (root / "var/lib/residency-monitor").stat()
    config = (root / "etc/residency-monitor").stat()
    assert (state.st_uid, state.st_gid, stat.S_IMODE(state.st_mode)) == (uid, gid, 0o750)
    assert (config.st_uid, config.st_gid, stat.S_IMODE(config.st_mode)) == (0, gid, 0o750)
    # The unit runs as that user and asks for the same directories and modes.
    s = unit_settings(UNIT.read_text())
    assert s["User"] == s["Group"] == [entry[0]]
    assert s["StateDirectoryMode"] == s["ConfigurationDirectoryMode"] == ["0750"]


# --- Python under the unit's sandbox -------------------------------------------

# Loads seccomp filters the way systemd 252 builds them for the unit, then
# execs the command: SystemCallFilter= as an allow list (a refused call kills
# the process: stricter than the unit's SystemCallErrorNumber=EPERM, so every
# refused call shows), MemoryDenyWriteExecute= (no W+X mmap, no mprotect
# with PROT_EXEC, no shmat with SHM_EXEC) and RestrictAddressFamilies=
# (socket() of another family fails with EAFNOSUPPORT).
SECCOMP_LAUNCHER = r'''
import ctypes, ctypes.util, errno, json, mmap, os, sys

spec = json.loads(open(sys.argv[1]).read())
lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.c_void_p]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_load.argtypes = [ctypes.c_void_p]

class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

ALLOW, KILL_PROCESS, EQ, GE, MASKED_EQ = 0x7FFF0000, 0x80000000, 4, 5, 7
def fail(e): return 0x00050000 | e

def add(ctx, action, name, *cmps):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:  # not a system call of this architecture
        return
    array = (Cmp * len(cmps))(*cmps) if cmps else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
    if rc < 0:
        raise OSError(-rc, f"seccomp_rule_add({name})")

guard = lib.seccomp_init(ALLOW)
wx = mmap.PROT_WRITE | mmap.PROT_EXEC
for name in ("mmap", "mmap2"):
    add(guard, fail(errno.EPERM), name, Cmp(2, MASKED_EQ, wx, wx))
for name in ("mprotect", "pkey_mprotect"):
    add(guard, fail(errno.EPERM), name, Cmp(2, MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
add(guard, fail(errno.EPERM), "shmat", Cmp(2, MASKED_EQ, 0o100000, 0o100000))  # SHM_EXEC
AF_MAX = 46
for family in set(range(AF_MAX)) - set(spec["families"]):
    add(guard, fail(errno.EAFNOSUPPORT), "socket", Cmp(0, EQ, family, 0))
add(guard, fail(errno.EAFNOSUPPORT), "socket", Cmp(0, GE, AF_MAX, 0))

allow = lib.seccomp_init(KILL_PROCESS)
for name in spec["allow"]:
    add(allow, ALLOW, name)

for ctx in (guard, allow):
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_load")
os.execv(spec["argv"][0], spec["argv"])
'''

# What the daemon will do, run inside the sandbox; every step must work.
EXERCISE = r'''
import ctypes, mmap, socket, ssl, struct, sys, threading, urllib.request
from wsgiref.simple_server import make_server, WSGIRequestHandler
from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

# Exactly CAP_NET_RAW, as AmbientCapabilities= gives it.
caps = dict(line.split(":\t") for line in open("/proc/self/status") if line.startswith("Cap"))
assert int(caps["CapEff"], 16) == 1 << 13, caps

# Capture: an AF_PACKET socket, a BPF filter compiled by libpcap through
# ctypes and attached, kernel drop statistics, a TPACKET_V3 ring mapped,
# promiscuous membership on lo.
from scapy.arch.linux import attach_filter
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind(("lo", 0))
attach_filter(sock, "ip or ip6 or (vlan and (ip or ip6))", "lo")
struct.unpack("II", sock.getsockopt(263, 6, 8))  # SOL_PACKET, PACKET_STATISTICS
sock.setsockopt(263, 10, 2)  # PACKET_VERSION: TPACKET_V3, then the daemon's 64 MiB ring
sock.setsockopt(263, 5, struct.pack("=7I", 1 << 20, 64, 2048, 64 * 512, 10, 0, 0))
ring = mmap.mmap(sock.fileno(), 64 << 20, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
ring.close()
sock.setsockopt(263, 1, struct.pack("iHH8s", socket.if_nametoindex("lo"), 1, 0, b""))
try:  # the one thing CAP_NET_RAW alone cannot do
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    raise AssertionError("SO_RCVBUFFORCE worked without CAP_NET_ADMIN")
except PermissionError:
    pass
sock.close()
assert socket.if_nameindex()  # AF_NETLINK
socket.getaddrinfo("localhost", 9093, flags=socket.AI_ADDRCONFIG)  # netlink too

# The daemon finds the default route's interface in /proc/thread-self/net,
# which ProcSubset=pid keeps; /proc/sys and /proc/stat are gone.
import os
assert open("/proc/thread-self/net/route").readline().startswith("Iface")
assert not os.path.exists("/proc/stat")

# Metrics over HTTP, in a thread.
registry = CollectorRegistry()
Counter("residency_flows", "flows", ["verdict"], registry=registry).labels("compliant").inc()
class Quiet(WSGIRequestHandler):
    def log_message(self, *args): pass
server = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=Quiet)
threading.Thread(target=server.serve_forever, daemon=True).start()
body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics").read()
assert b'residency_flows_total{verdict="compliant"} 1.0' in body
server.shutdown()
ssl.create_default_context()

# sd_notify to a socket.
from residency_monitor import sdnotify
assert sdnotify.ready("sandboxed")

# A ctypes callback (libffi closure) needs no writable+executable memory.
libc = ctypes.CDLL(None)
CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
numbers = (ctypes.c_int * 5)(5, 1, 4, 2, 3)
libc.qsort(numbers, 5, ctypes.sizeof(ctypes.c_int), CMP(lambda a, b: a[0] - b[0]))
assert list(numbers) == [1, 2, 3, 4, 5]

# The sandbox is really there.
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    raise AssertionError("W+X mapping allowed")
except PermissionError:
    pass
try:
    socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET)
    raise AssertionError("AF_ALG allowed")
except OSError as e:
    assert e.errno == 97, e  # EAFNOSUPPORT
print("exercise done")
'''


def syscall_groups(analyze: str) -> dict[str, list[str]]:
    listing = run(analyze, "syscall-filter", "--no-pager")
    assert listing.returncode == 0, listing.stderr
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in listing.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        else:
            current = None
    return groups


def expand(groups: dict[str, list[str]], items: list[str]) -> set[str]:
    out: set[str] = set()
    for item in items:
        out |= expand(groups, groups[item]) if item.startswith("@") else {item}
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    """Run argv as root without capabilities but the unit's, under its seccomp filters."""
    if os.geteuid() != 0:
        pytest.fail("the sandbox tests drop capabilities from root: run `make test` as root")
    analyze = tool("systemd-analyze", "systemd")
    setpriv = tool("setpriv", "util-linux")
    unshare = tool("unshare", "util-linux")
    s = unit_settings(UNIT.read_text())
    assert s["ProtectProc"] == ["invisible"] and s["ProcSubset"] == ["pid"]
    groups = syscall_groups(analyze)
    allowed: set[str] = set()
    for n, value in enumerate(s["SystemCallFilter"]):  # systemd's semantics
        deny = value.startswith("~")
        names = expand(groups, value.lstrip("~").split())
        assert n > 0 or not deny, "the filter should be an allow list"
        allowed = allowed - names if deny else allowed | names
    families = [getattr(socket, name) for name in s["RestrictAddressFamilies"][0].split()]
    caps = ",".join("+" + c.removeprefix("CAP_").lower()
                    for c in s["AmbientCapabilities"][0].split())
    assert s["MemoryDenyWriteExecute"] == ["yes"]
    workdir = tmp_path_factory.mktemp("sandbox")
    launcher = workdir / "launcher.py"
    launcher.write_text(SECCOMP_LAUNCHER)

    def sandboxed(*argv: str, env: dict[str, str] | None = None):
        spec = workdir / "spec.json"
        spec.write_text(json.dumps({"allow": sorted(allowed), "families": families,
                                    "argv": list(argv)}))
        # A private /proc as ProtectProc=invisible and ProcSubset=pid mount it.
        # uid 0 keeps read access to this checkout and the Python install;
        # SECBIT_NOROOT makes root's exec grant no capabilities, so only the
        # ambient CAP_NET_RAW remains, as for User=residency-monitor.
        return subprocess.run(
            [unshare, "--mount", "--pid", "--fork", "--kill-child", "--",
             "sh", "-c", 'mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec "$@"',
             "sh",
             setpriv, "--securebits", "+noroot,+noroot_locked,+no_setuid_fixup",
             f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
             f"--bounding-set=-all,{caps}", "--",
             sys.executable, str(launcher), str(spec)],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
            env={**os.environ, **(env or {})})

    return sandboxed


def test_python_daemon_work_runs_in_the_units_sandbox(sandbox, tmp_path: Path) -> None:
    script = tmp_path / "exercise.py"
    script.write_text(EXERCISE)
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(notify))
        receiver.settimeout(5)
        result = sandbox(sys.executable, str(script), env={"NOTIFY_SOCKET": str(notify)})
        assert result.returncode == 0, result.stderr
        assert receiver.recv(4096) == b"READY=1\nSTATUS=sandboxed"
    assert "exercise done" in result.stdout


def test_replay_runs_in_the_units_sandbox(sandbox) -> None:
    result = sandbox(sys.executable, "-m", "residency_monitor", "replay", "--format", "jsonl",
                     "-q")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 26  # the bundled sample's flows


def test_the_sandbox_kills_a_refused_system_call(sandbox) -> None:
    # setpriority() is in @resources, which the unit denies: proof the filter is loaded.
    result = sandbox(sys.executable, "-c", "import os; os.setpriority(os.PRIO_PROCESS, 0, 5)")
    assert result.returncode == -signal.SIGSYS
