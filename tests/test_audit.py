"""The audit log: its hash chain on real files, every kind of tampering named by file and line.

Logs are written by the real writer with an injected clock, then damaged the
way an intruder or a crash would (bytes changed, lines deleted or swapped,
tails cut, segments removed or renamed, gzip data corrupted) and checked by
the same ``verify`` the ``audit verify`` command runs.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT, corpus_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from residency_monitor.audit import (
    GENESIS,
    AuditLog,
    Auditor,
    line_hash,
    list_segments,
    parse_witness,
    rfc3339,
    segment_key,
    verify,
)
from residency_monitor.cli import main
from residency_monitor.engine import Engine
from residency_monitor.geo import GeoConfig, Geolocator
from residency_monitor.networks import DEFAULT_INTERNAL
from residency_monitor.policy import default_policy
from residency_monitor.pseudonym import Pseudonymizer, pseudonym
from residency_monitor.records import FlowRecord
from residency_monitor.replay import replay
from residency_monitor.residency import Residency
from residency_monitor.sample import SAMPLE_PATH

T0 = 1_800_000_000.0          # 2027-01-15T08:00:00Z
KEY = b"an audit pseudonym key, 32 byte"


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def write_log(directory: Path, n: int = 20, *, clock: Clock | None = None,
              witnesses: list | None = None, **options) -> AuditLog:
    """A closed log of ``n`` verdict entries, half a second apart."""
    clock = clock or Clock()
    options.setdefault("compress", False)
    log = AuditLog(directory, clock=clock, on_checkpoint=(
        (lambda *w: witnesses.append(w)) if witnesses is not None else None), **options)
    log.open(strict=True)
    for i in range(n):
        clock.t += 0.5
        log.append("verdict", {"i": i, "client_ip": "anon-0123456789abcdef", "note": "é"})
    log.close()
    return log


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def rewrite(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in new))


def only_segment(directory: Path) -> Path:
    (seg,) = list_segments(directory)
    return seg


def problem(directory: Path, **kwargs) -> tuple[str, int, str]:
    res = verify([directory], **kwargs)
    assert res.problem is not None, res.summary()
    return Path(res.problem.file).name, res.problem.line, res.problem.message


# ------------------------------------------------------------------------------ the format

def test_round_trip_and_the_exact_line_format(tmp_path):
    log = write_log(tmp_path, 5)
    seg = only_segment(tmp_path)
    raw = lines(seg)
    first = json.loads(raw[0])
    assert list(first) == ["seq", "time", "type", "data", "prev"]
    assert first == {"seq": 1, "time": "2027-01-15T08:00:00.000000Z", "type": "segment",
                     "data": {"previous_segment": None, "previous_seq": 0, "reason": "start"},
                     "prev": GENESIS}
    assert seg.name == "audit-20270115T080000Z.jsonl"
    assert raw[1].startswith(b'{"seq":2,"time":"2027-01-15T08:00:00.500000Z","type":"verdict",'
                             b'"data":{"i":0,') and "é".encode() in raw[1]
    for before, line in zip(raw, raw[1:], strict=False):
        assert json.loads(line)["prev"] == line_hash(before)
    last = json.loads(raw[-1])
    assert last["type"] == "checkpoint"
    assert last["data"] == {"records": 6, "head": line_hash(raw[-2])}
    res = verify([tmp_path])
    assert res.ok and res.exit_code == 0 and not res.warnings
    assert res.summary() == f"OK: 7 records in 1 segments, head {log.head}"
    assert res.head == line_hash(raw[-1]) and (res.first_seq, res.last_seq) == (1, 7)


def test_rfc3339_and_segment_order():
    assert rfc3339(T0 + 0.123456) == "2027-01-15T08:00:00.123456Z"
    assert rfc3339(T0 + 0.9999996) == "2027-01-15T08:00:01.000000Z"
    names = ["audit-20270115T080000Z.jsonl", "audit-20270115T080000Z-2.jsonl.gz",
             "audit-20270115T080000Z-1.jsonl", "audit-20270114T235959Z.jsonl.gz"]
    assert sorted(names, key=segment_key) == [
        "audit-20270114T235959Z.jsonl.gz", "audit-20270115T080000Z.jsonl",
        "audit-20270115T080000Z-1.jsonl", "audit-20270115T080000Z-2.jsonl.gz"]


def test_each_start_continues_the_chain_in_a_new_segment(tmp_path):
    clock = Clock()
    write_log(tmp_path, 3, clock=clock)
    write_log(tmp_path, 3, clock=clock)    # same second: the name gets -1
    write_log(tmp_path, 3, clock=clock)
    segs = list_segments(tmp_path)
    assert [s.name for s in segs] == ["audit-20270115T080000Z.jsonl",
                                      "audit-20270115T080001Z.jsonl",
                                      "audit-20270115T080003Z.jsonl"]
    header = json.loads(lines(segs[1])[0])
    assert header["seq"] == 6 and header["data"] == {
        "previous_segment": "audit-20270115T080000Z.jsonl", "previous_seq": 5, "reason": "start"}
    assert header["prev"] == line_hash(lines(segs[0])[-1])
    assert verify([tmp_path]).summary().startswith("OK: 15 records in 3 segments")


def test_one_writer_per_directory(tmp_path):
    first = AuditLog(tmp_path)
    first.open(strict=True)
    with pytest.raises(OSError, match="another process"):
        AuditLog(tmp_path).open(strict=True)
    first.close()


# ------------------------------------------------------------------------------ tampering

def test_modified_line_is_named(tmp_path):
    write_log(tmp_path, 20)
    seg = only_segment(tmp_path)
    raw = lines(seg)
    raw[9] = raw[9].replace(b'"i":8', b'"i":9')   # line 10 still parses and has its seq
    rewrite(seg, raw)
    name, line, message = problem(tmp_path)
    assert (name, line) == (seg.name, 10) and "modified" in message
    res = CliRunner().invoke(main, ["audit", "verify", str(tmp_path)])
    assert res.exit_code == 1
    assert res.stdout.strip() == f"{seg}:10: {message}"


def test_deleted_line_is_named(tmp_path):
    write_log(tmp_path, 20)
    seg = only_segment(tmp_path)
    raw = lines(seg)
    del raw[11]                                    # seq 12
    rewrite(seg, raw)
    name, line, message = problem(tmp_path)
    assert (name, line) == (seg.name, 12)
    assert message == "seq 13 follows seq 11: seq 12 missing before this line (deleted)"


def test_reordered_lines_are_named(tmp_path):
    write_log(tmp_path, 20)
    seg = only_segment(tmp_path)
    raw = lines(seg)
    raw[6], raw[7] = raw[7], raw[6]
    rewrite(seg, raw)
    name, line, message = problem(tmp_path)
    assert (name, line) == (seg.name, 7) and "seq 8 follows seq 6" in message


def test_renumbered_deletion_is_still_caught(tmp_path):
    """Deleting a line and renumbering every later seq leaves the hashes to speak."""
    write_log(tmp_path, 10)
    seg = only_segment(tmp_path)
    raw = lines(seg)
    del raw[4]
    for i in range(4, len(raw)):
        obj = json.loads(raw[i])
        obj["seq"] -= 1
        raw[i] = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    rewrite(seg, raw)
    name, line, message = problem(tmp_path)
    assert (name, line) == (seg.name, 5) and "modified or inserted" in message


def test_every_line_but_the_last_is_named_when_modified(tmp_path):
    """A changed digit in any line's time (valid JSON, right seq) points at that line."""
    write_log(tmp_path / "orig", 6, rotate_bytes=600)
    segs = list_segments(tmp_path / "orig")
    assert len(segs) >= 3
    targets = [(s.name, i) for s in segs for i in range(len(lines(s)))]
    for name, index in targets[:-1]:
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(tmp_path / "orig", work)
        raw = lines(work / name)
        raw[index] = raw[index].replace(b':00', b':01', 1)
        rewrite(work / name, raw)
        got = problem(work)
        assert got[:2] == (name, index + 1), (name, index, got)


def test_tail_truncation_is_caught_by_the_checkpoint_witness(tmp_path):
    witnesses: list = []
    write_log(tmp_path, 20, witnesses=witnesses)
    (records, head, cp_seq, cp_hash), = witnesses
    assert cp_seq == records + 1
    seg = only_segment(tmp_path)
    raw = lines(seg)
    assert verify([tmp_path], witness=(cp_seq, cp_hash)).ok
    assert verify([tmp_path], witness=(records, head)).ok
    rewrite(seg, raw[:-4])                                 # whole lines: the chain holds
    res = verify([tmp_path])
    assert res.ok and any("does not end with a checkpoint" in n for n in res.notes)
    name, line, message = problem(tmp_path, witness=(records, head))
    assert (name, line) == (seg.name, len(raw) - 4)
    assert message.startswith(f"the log ends here at seq {len(raw) - 4}, but the witness says "
                              f"seq {records} was written")
    cli = CliRunner().invoke(main, ["audit", "verify", str(tmp_path), "--witness",
                                    f"{records}:{head}"])
    assert cli.exit_code == 1 and "truncated" in cli.stdout
    assert problem(tmp_path, witness=(None, head))[2].endswith("truncated or rewritten")


def test_partial_last_line_is_a_warning_and_the_next_start_repairs_it(tmp_path):
    clock = Clock()
    write_log(tmp_path, 5, clock=clock)
    seg = only_segment(tmp_path)
    complete = seg.read_bytes()
    with open(seg, "ab") as f:
        f.write(b'{"seq":8,"time":"2027-01-15T08:0')       # the crash
    res = verify([tmp_path])
    assert res.ok and res.exit_code == 0
    (warning,) = res.warnings
    assert (Path(warning.file).name, warning.line) == (seg.name, 8)
    assert "partial last line (32 bytes)" in warning.message
    cli = CliRunner().invoke(main, ["audit", "verify", str(tmp_path)])
    assert cli.exit_code == 0 and "warning:" in cli.stderr and cli.stdout.startswith("OK: 7")

    clock.t += 60
    write_log(tmp_path, 2, clock=clock)
    assert seg.read_bytes().startswith(complete) and seg.stat().st_size == len(complete) + 32
    repair = json.loads(lines(list_segments(tmp_path)[1])[0])
    assert repair["data"] == {"previous_segment": seg.name, "previous_seq": 7,
                              "reason": "repair", "discarded_bytes": 32}
    assert repair["prev"] == line_hash(lines(seg)[-1]) and repair["seq"] == 8
    res = verify([tmp_path])
    assert res.ok and not res.warnings, (res.summary(), res.warnings)


def test_a_partial_line_no_repair_acknowledges_is_tampering(tmp_path):
    clock = Clock()
    write_log(tmp_path, 3, clock=clock)
    clock.t += 10
    write_log(tmp_path, 3, clock=clock)
    first = list_segments(tmp_path)[0]
    with open(first, "ab") as f:
        f.write(b'{"seq":99')
    name, line, message = problem(tmp_path)
    assert (name, line) == (first.name, 6) and "does not acknowledge" in message


def test_missing_segment_is_named(tmp_path):
    clock = Clock()
    for _ in range(3):
        write_log(tmp_path, 3, clock=clock)
        clock.t += 10
    segs = list_segments(tmp_path)
    segs[1].unlink()
    name, line, message = problem(tmp_path)
    assert (name, line) == (segs[2].name, 1)
    assert message == (f"previous segment {segs[1].name} is missing (records 6 to 10); "
                       f"{segs[0].name} comes before this one")


def test_reordered_segments_are_named(tmp_path):
    clock = Clock()
    for _ in range(3):
        write_log(tmp_path, 3, clock=clock)
        clock.t += 10
    a, b, c = list_segments(tmp_path)
    tmp = b.with_name("swap")
    b.rename(tmp)
    c.rename(b)
    tmp.rename(c)
    name, line, message = problem(tmp_path)
    assert (name, line) == (b.name, 1) and "reordered or renamed" in message


def test_a_truncated_middle_segment_is_named(tmp_path):
    clock = Clock()
    write_log(tmp_path, 6, clock=clock)
    clock.t += 10
    write_log(tmp_path, 3, clock=clock)
    first = list_segments(tmp_path)[0]
    rewrite(first, lines(first)[:4])
    name, line, message = problem(tmp_path)
    assert (name, line) == (first.name, 4) and "truncated after this line" in message


def test_gzip_segments_verify_and_a_damaged_one_is_named(tmp_path):
    write_log(tmp_path, 60, rotate_bytes=1500, compress=True)
    segs = list_segments(tmp_path)
    assert len(segs) > 3 and all(s.name.endswith(".jsonl.gz") for s in segs[:-1])
    assert not list(tmp_path.glob("*.tmp"))
    assert all(s.stat().st_mode & 0o777 == 0o640 for s in segs)
    assert gzip.decompress(segs[0].read_bytes()).startswith(b'{"seq":1,')
    res = verify([tmp_path])
    assert res.ok, res.summary()
    assert res.records == 60 + len(segs) + 1
    data = bytearray(segs[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    segs[1].write_bytes(bytes(data))
    name, _line, message = problem(tmp_path)
    assert name == segs[1].name and ("damaged" in message or "modified" in message)
    segs[1].write_bytes(bytes(data[: len(data) // 2]))   # cut short
    name, _line, message = problem(tmp_path)
    assert name == segs[1].name and "damaged" in message


def test_rotation_by_size(tmp_path):
    log = write_log(tmp_path, 40, rotate_bytes=2000)
    segs = list_segments(tmp_path)
    assert len(segs) >= 4
    for seg in segs[:-1]:
        assert seg.stat().st_size < 2000 + 300
        assert json.loads(lines(seg)[0])["type"] == "segment"
    reasons = [json.loads(lines(s)[0])["data"]["reason"] for s in segs]
    assert reasons == ["start"] + ["size"] * (len(segs) - 1)
    assert verify([tmp_path]).head == log.head


def test_rotation_by_day(tmp_path):
    clock = Clock(T0 + 16 * 3600 - 2)         # 23:59:58 UTC
    log = AuditLog(tmp_path, clock=clock, compress=False)
    log.open(strict=True)
    for _ in range(6):
        log.append("verdict", {})
        clock.t += 1
    log.close()
    segs = list_segments(tmp_path)
    assert [s.name for s in segs] == ["audit-20270115T235958Z.jsonl",
                                      "audit-20270116T000000Z.jsonl"]
    assert json.loads(lines(segs[1])[0])["data"]["reason"] == "day"
    assert verify([tmp_path]).ok


def test_retention_removes_old_segments_and_verify_accepts_the_cut(tmp_path):
    clock = Clock()
    for _ in range(4):                          # one segment a day
        write_log(tmp_path, 3, clock=clock, retention_days=3)
        clock.t += 86400
    before = [s.name for s in list_segments(tmp_path)]
    assert len(before) == 4
    clock.t += 86400                            # day 5: days 1 and 2 are past retention
    log = AuditLog(tmp_path, clock=clock, compress=False, retention_days=3)
    log.open(strict=True)
    log.close()
    segs = list_segments(tmp_path)
    assert [s.name for s in segs[:2]] == before[2:] and len(segs) == 3
    (retention,) = [json.loads(line)["data"] for line in lines(segs[-1])
                    if json.loads(line)["type"] == "retention"]
    assert retention["removed"] == before[:2] and retention["last_seq"] == 10
    assert retention["last_hash"] == json.loads(lines(segs[0])[0])["prev"]
    res = verify([tmp_path])
    assert res.ok, res.summary()
    assert res.notes == [f"begins after retention cut at seq 10 (segments up to {before[1]} "
                         f"removed)"]
    # a segment file given by name may begin anywhere
    res = verify([segs[0]])
    assert res.ok and "earlier segments not checked" in res.notes[0]


def test_a_missing_first_segment_without_retention_is_named(tmp_path):
    clock = Clock()
    for _ in range(3):
        write_log(tmp_path, 3, clock=clock)
        clock.t += 10
    first, second, _third = list_segments(tmp_path)
    first.unlink()
    name, line, message = problem(tmp_path)
    assert (name, line) == (second.name, 1)
    assert message == (f"begins after segment {first.name}, which is missing, and no "
                       f"retention line accounts for its removal (records 1 to 5 gone)")


def test_fsync_policy(tmp_path):
    calls: list[int] = []
    clock = Clock()
    every = AuditLog(tmp_path / "every", clock=clock, fsync=calls.append, fsync_interval=0,
                     compress=False)
    every.open(strict=True)
    base = len(calls)
    for _ in range(10):
        every.append("flow", {})
    assert len(calls) - base == 10
    every.close()

    calls.clear()
    timed = AuditLog(tmp_path / "timed", clock=clock, fsync=calls.append, fsync_interval=1.0,
                     compress=False)
    timed.open(strict=True)
    base = len(calls)
    for _ in range(30):                         # 3 seconds of entries, 0.1 s apart, with
        clock.t += 0.1                          # the daemon loop's tick after each
        timed.append("flow", {})
        timed.tick()
    assert 2 <= len(calls) - base <= 4
    timed.append("flow", {})                    # written at the next tick, synced when due
    clock.t += 1.0
    before = len(calls)
    timed.tick()                                # the daemon loop: due, and data is waiting
    assert len(calls) == before + 1
    assert timed.stats()["records"]["flow"] == 31
    timed.tick()                                # nothing new: no fsync
    assert len(calls) == before + 1
    timed.close()                               # checkpoint and its sync
    assert len(calls) > before + 1


def test_checkpoints_come_every_interval_and_name_the_head(tmp_path):
    clock = Clock()
    witnesses: list = []
    log = AuditLog(tmp_path, clock=clock, checkpoint_interval=60, compress=False,
                   on_checkpoint=lambda *w: witnesses.append(w))
    log.open(strict=True)
    for _ in range(5):
        clock.t += 30
        log.append("verdict", {})
        log.tick()
    log.close()
    kinds = [json.loads(line)["type"] for line in lines(only_segment(tmp_path))]
    assert kinds.count("checkpoint") == 3 and kinds[-1] == "checkpoint"
    for _records, _head, seq, digest in witnesses:
        assert verify([tmp_path], witness=(seq, digest)).ok


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_modification_is_detected(tmp_path_factory, data):
    """With the witness the daemon logs at stop, no single changed byte goes unnoticed."""
    base = tmp_path_factory.getbasetemp() / "one-byte-original"
    witnesses: list = []
    if not base.exists():
        write_log(base, 6, rotate_bytes=700, witnesses=witnesses)
        (base / "witness").write_text(json.dumps(witnesses[-1]))
    _records, _head, seq, digest = json.loads((base / "witness").read_text())
    segs = list_segments(base)
    seg = data.draw(st.sampled_from(segs))
    original = seg.read_bytes()
    pos = data.draw(st.integers(0, len(original) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != original[pos]))
    work = tmp_path_factory.mktemp("one-byte")
    for s in segs:
        shutil.copy(s, work / s.name)
    changed = bytearray(original)
    changed[pos] = value
    (work / seg.name).write_bytes(bytes(changed))
    res = verify([work], witness=(seq, digest))
    assert not res.ok, (seg.name, pos, value)


# ------------------------------------------------------------------------------ entries

def _sample_records() -> list[FlowRecord]:
    recs: list[FlowRecord] = []
    residency = Residency(default_policy(), Geolocator(GeoConfig()))
    replay([SAMPLE_PATH], recs.append, engine=Engine(sink=recs.append, enrich=residency))
    return recs


def test_verdicts_are_logged_pseudonymised(tmp_path):
    recs = _sample_records()
    log = AuditLog(tmp_path, compress=False)
    log.open(strict=True)
    auditor = Auditor(log, pseudonymizer=Pseudonymizer(KEY, DEFAULT_INTERNAL))
    for rec in recs:
        auditor.record(rec)
    log.close()
    text = only_segment(tmp_path).read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    verdicts = [e["data"] for e in entries if e["type"] == "verdict"]
    assert len(verdicts) == sum(r.verdict not in ("compliant", None) for r in recs)
    assert sum(len(v["violations"]) for v in verdicts if v["verdict"] == "violation") == 12
    for rec in recs:
        if rec.direction == "outbound":
            assert f'"{rec.client_ip}"' not in text
    crm = next(v for v in verdicts if v["server_ip"] == "13.107.42.14")
    assert crm["client_ip"] == pseudonym(KEY, "10.10.3.21")
    assert list(crm) == list(recs[0].to_dict())           # the record's fields, in order
    assert not any(e["type"] == "flow" for e in entries)
    assert verify([tmp_path]).ok


def test_all_flows_and_live_verdicts(tmp_path):
    recs = [r for r in _sample_records() if r.final]
    log = AuditLog(tmp_path, compress=False)
    log.open(strict=True)
    auditor = Auditor(log, all_flows=True)
    violation = next(r for r in recs if r.verdict == "violation")
    key = (violation.client_ip, violation.server_ip, violation.server_port, violation.ts_start)
    live = {"ts_start": violation.ts_start, "client_ip": violation.client_ip,
            "server_ip": violation.server_ip, "violations": ["residency"]}
    auditor.live(key, live)
    auditor.live(key, live)                     # the handshake confirms: not logged again
    auditor.live(key, {**live, "violations": ["residency", "tls_version"]})   # news: logged
    for rec in recs:
        auditor.record(rec)
    auditor.live(key, live)                     # after the record, a new flow could reuse it
    log.close()
    entries = [json.loads(line) for line in lines(only_segment(tmp_path))]
    staged = [e for e in entries if e["type"] == "verdict" and e["data"].get("stage") == "live"]
    assert len(staged) == 3
    flows = [e for e in entries if e["type"] in ("verdict", "flow") and "stage" not in e["data"]]
    assert len(flows) == len(recs)


def test_expired_exceptions_are_logged_once_a_day(tmp_path):
    recs = [r for r in _sample_records() if r.final and r.verdict == "violation"]
    import dataclasses

    expired = [dataclasses.replace(r, exception_expired="crm-us-2024") for r in recs[:3]]
    log = AuditLog(tmp_path, compress=False)
    log.open(strict=True)
    owner = type("E", (), {"owner": "it@example.com",
                           "expires": __import__("datetime").date(2024, 12, 31)})()
    auditor = Auditor(log, exceptions=lambda name: owner if name == "crm-us-2024" else None)
    for rec in expired:
        auditor.record(rec)
    log.close()
    entries = [json.loads(line) for line in lines(only_segment(tmp_path))]
    (entry,) = [e["data"] for e in entries if e["type"] == "exception_expired"]
    assert entry["exception"] == "crm-us-2024" and entry["owner"] == "it@example.com"
    assert entry["expired"] == "2024-12-31" and entry["flow"]["server_ip"] == recs[0].server_ip


def test_policy_entries(tmp_path):
    log = AuditLog(tmp_path, compress=False)
    log.open(strict=True)
    auditor = Auditor(log)
    policy = default_policy()
    auditor.policy(policy, path=None, trigger="start")
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: [oops\n")
    auditor.policy(None, path=str(bad), trigger="sighup", errors=["bad.yaml:1: syntax"])
    log.close()
    loaded, refused = [json.loads(line)["data"] for line in lines(only_segment(tmp_path))
                       if b'"type":"policy"' in line]
    assert loaded == {"name": "macau-pdpa", "sha256": policy.sha256, "path": policy.source,
                      "trigger": "start", "result": "loaded", "errors": []}
    assert refused["result"] == "refused" and refused["name"] is None
    assert len(refused["sha256"]) == 64 and refused["errors"] == ["bad.yaml:1: syntax"]


def test_write_errors_never_stop_the_caller_and_the_log_recovers(tmp_path):
    """A real full disk: a 64 KiB tmpfs. Errors are counted; the chain survives them."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            f.write(b"x" * (40 << 10))
        log = AuditLog(mnt / "audit", compress=False)
        log.open(strict=True)
        written = failed = 0
        for i in range(200):
            if log.append("flow", {"i": i, "pad": "y" * 400}) is None:
                failed += 1
            else:
                written += 1
        assert failed and written and log.write_errors >= failed
        assert log.stats()["write_errors"] == log.write_errors
        filler.unlink()
        assert log.append("flow", {"after": "recovery"}) is not None
        log.close()
        segs = list_segments(mnt / "audit")
        header = json.loads(lines(segs[-1])[0])["data"]
        assert header["reason"] == "repair" and header["lost_records"] >= failed
        res = verify([mnt / "audit"])
        assert res.ok, res.summary()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_read_only_disk_loses_no_written_entry_and_the_log_resumes(tmp_path):
    """A real read-only filesystem (a tmpfs remounted ro, as after errors=remount-ro) when
    the daemon starts: opening and appending fail, counted, never raised; what earlier
    runs wrote stays byte for byte; once writable again the chain continues from it."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        earlier = AuditLog(mnt / "audit", compress=False)
        earlier.open(strict=True)
        for i in range(20):
            assert earlier.append("flow", {"i": i}) is not None
        earlier.close()
        before = {p.name: p.read_bytes() for p in list_segments(mnt / "audit")}
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        log = AuditLog(mnt / "audit", compress=False)
        log.open()                                   # the daemon's start: never fatal
        assert log.write_errors >= 1
        results = [log.append("flow", {"ro": i}) for i in range(5)]
        assert results == [None] * 5
        assert {p.name: p.read_bytes() for p in list_segments(mnt / "audit")} == before
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        assert log.append("flow", {"after": "rw"}) is not None
        log.close()
        res = verify([mnt / "audit"])
        assert res.ok, res.summary()
        assert {p.name: p.read_bytes() for p in list_segments(mnt / "audit")
                if p.name in before} == before
    finally:
        for held in ("earlier", "log"):       # an open segment would keep the mount busy
            if held in locals():
                locals()[held].close()
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=False,
                       capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ------------------------------------------------------------------------------ the CLI

def test_cli_exit_codes_and_json(tmp_path):
    write_log(tmp_path / "log", 5)
    ok = CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "log"), "--json"])
    assert ok.exit_code == 0
    out = json.loads(ok.stdout)
    assert out["ok"] and out["records"] == 7 and out["problem"] is None
    (tmp_path / "empty").mkdir()
    assert CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "empty")]).exit_code == 2
    assert CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "nope")]).exit_code == 2
    bad_witness = CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "log"),
                                            "--witness", "12:xyz"])
    assert bad_witness.exit_code == 2
    assert parse_witness("7:" + "a" * 64) == (7, "a" * 64)
    seg = only_segment(tmp_path / "log")
    raw = lines(seg)
    raw[2] = raw[2].replace(b'"i":1', b'"i":7')
    rewrite(seg, raw)
    broken = CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "log"), "--json"])
    assert broken.exit_code == 1
    assert json.loads(broken.stdout)["problem"] == {
        "file": str(seg), "line": 3,
        "message": json.loads(broken.stdout)["problem"]["message"]}
    config = tmp_path / "c.yaml"
    config.write_text(f"audit: {{path: {tmp_path / 'log'}}}\n")
    assert CliRunner().invoke(main, ["audit", "verify", "--config", str(config)]).exit_code == 1


def test_replay_writes_the_audit_log(tmp_path):
    audit = tmp_path / "audit"
    res = CliRunner().invoke(main, ["replay", "-q", "-o", str(tmp_path / "flows.jsonl"),
                                    "--audit", str(audit)])
    assert res.exit_code == 0, res.output
    entries = [json.loads(line) for line in lines(only_segment(audit))]
    kinds = [e["type"] for e in entries]
    assert kinds[:3] == ["segment", "start", "policy"] and kinds[-2:] == ["stop", "checkpoint"]
    violations = [e["data"] for e in entries
                  if e["type"] == "verdict" and e["data"]["verdict"] == "violation"]
    assert sum(len(v["violations"]) for v in violations) == 12
    assert entries[1]["data"]["policy"] == "macau-pdpa"
    flows = len((tmp_path / "flows.jsonl").read_text().splitlines())
    res = CliRunner().invoke(main, ["replay", "-q", "-o", os.devnull, "--audit", str(audit),
                                    "--audit-all"])
    assert res.exit_code == 0
    second = [json.loads(line) for line in lines(list_segments(audit)[1])]
    assert sum(e["type"] in ("flow", "verdict") for e in second) == flows
    verified = CliRunner().invoke(main, ["audit", "verify", str(audit)])
    assert verified.exit_code == 0 and verified.stdout.startswith("OK: ")
    assert "in 2 segments" in verified.stdout


def test_replay_audit_refuses_a_bad_key(tmp_path):
    key = tmp_path / "k"
    key.write_bytes(b"short")
    os.chmod(key, 0o600)
    res = CliRunner().invoke(main, ["replay", "-q", "-o", os.devnull, "--audit",
                                    str(tmp_path / "a"), "--audit-key", str(key)])
    assert res.exit_code == 2 and f"{key}:" in res.output


def test_replay_audit_of_the_corpus_verifies(tmp_path):
    files = corpus_files()
    if not files:
        pytest.skip("shared corpus not found (../shared sits beside the checkout)")
    audit = tmp_path / "audit"
    key = tmp_path / "key"
    key.write_bytes(KEY)
    os.chmod(key, 0o600)
    res = CliRunner().invoke(main, ["replay", "-q", "-o", str(tmp_path / "flows.jsonl"),
                                    "--audit", str(audit), "--audit-all", "--audit-key",
                                    str(key), *map(str, files)])
    assert res.exit_code in (0, 4), res.output
    records = [json.loads(line) for line in (tmp_path / "flows.jsonl").read_text().splitlines()]
    entries = [json.loads(line) for line in lines(only_segment(audit))]
    logged = [e["data"] for e in entries if e["type"] in ("flow", "verdict")]
    assert len(logged) == len(records) > 100
    internal = Pseudonymizer(KEY, DEFAULT_INTERNAL)
    for rec, data in zip(records, logged, strict=True):
        assert data["client_ip"] == internal.address(rec["client_ip"])
        assert data["server_ip"] == internal.address(rec["server_ip"])
    assert verify([audit]).ok


# ------------------------------------------------------------------------------ the daemon

def test_the_running_daemon_keeps_a_verifiable_audit_log(tmp_path):
    """``residency-monitor run`` on a veth pair: start, policy, the sample's violations (before
    their alerts, which fail here and are audited too), a refused reload, stop after SIGTERM."""
    import signal
    import time

    from daemon_fixture import DaemonProcess
    from netns_fixture import netns_pair, write_pcap
    from prometheus_fixture import free_port

    from residency_monitor.capture.files import open_capture

    frames = tmp_path / "sample-replay.pcap"
    with open_capture(SAMPLE_PATH) as reader:
        write_pcap(frames, reader)
    key = tmp_path / "audit.key"
    key.write_bytes(KEY)
    os.chmod(key, 0o600)
    policy = tmp_path / "policy.yaml"
    policy.write_bytes((ROOT / "configs" / "policies" / "macau-pdpa.yaml").read_bytes())
    audit = tmp_path / "audit"
    with netns_pair() as pair:
        daemon = DaemonProcess(tmp_path / "daemon", [
            "capture:", f"  interfaces: [{pair.dev_b}]", f"  netns: {pair.b}",
            "flows: {tcp_idle: 5, tcp_closed: 1, udp_idle: 2}",
            f"policy: {policy}",
            "alertmanager:", f"  urls: [http://127.0.0.1:{free_port()}]",   # nobody listens
            "audit:", f"  path: {audit}", f"  pseudonymize_key_file: {key}",
            "  fsync_interval: 0.5",
        ])
        try:
            daemon.start()
            pair.replay(frames, pps=2000)

            def finals() -> list[dict]:
                out = []
                for seg in list_segments(audit):
                    for line in lines(seg):
                        entry = json.loads(line)
                        if entry["type"] == "verdict" and "stage" not in entry["data"] \
                                and entry["data"]["verdict"] == "violation":
                            out.append(entry["data"])
                return out

            deadline = time.monotonic() + 20
            while sum(len(v["violations"]) for v in finals()) < 12 and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            assert sum(len(v["violations"]) for v in finals()) == 12, daemon.log_text()
            import urllib.request

            with urllib.request.urlopen(f"http://{daemon.target}/metrics", timeout=5) as resp:
                metrics = resp.read().decode()
            assert 'residency_audit_records_total{kind="verdict"}' in metrics
            assert "residency_audit_write_errors_total 0.0" in metrics
            assert "residency_audit_last_write_timestamp_seconds" in metrics
            policy.write_text("policy: [not a policy\n")
            daemon.signal(signal.SIGHUP)
            time.sleep(1)
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    entries = [json.loads(line) for seg in list_segments(audit) for line in lines(seg)]
    kinds = [e["type"] for e in entries]
    assert kinds[:3] == ["segment", "start", "policy"] and kinds[-2:] == ["stop", "checkpoint"]
    assert entries[1]["data"]["interfaces"] == [pair.dev_b] and entries[1]["data"]["pseudonymized"]
    assert entries[2]["data"]["result"] == "loaded" and entries[2]["data"]["trigger"] == "start"
    refused = [e["data"] for e in entries if e["type"] == "policy" and
               e["data"]["result"] == "refused"]
    assert refused and refused[0]["trigger"] == "sighup" and refused[0]["errors"]
    assert "alert_failure" in kinds
    live = [e for e in entries if e["type"] == "verdict" and e["data"].get("stage") == "live"]
    assert live and all(e["data"]["client_ip"].startswith("anon-") for e in live)
    # each live verdict comes before the failure of the alert it caused
    assert kinds.index("verdict") < kinds.index("alert_failure")
    text = "\n".join(json.dumps(e) for e in entries)
    for address in ("10.10.3.21", "192.168.1.23", "192.168.1.31"):
        assert f'"{address}"' not in text
    witness = [e for e in daemon.log_events() if e.get("event") == "audit_checkpoint"][-1]
    assert witness["checkpoint_seq"] == entries[-1]["seq"]
    res = CliRunner().invoke(main, ["audit", "verify", str(audit), "--witness",
                                    f"{witness['checkpoint_seq']}:{witness['checkpoint_hash']}"])
    assert res.exit_code == 0 and res.stdout.startswith(f"OK: {len(entries)} records"), \
        res.output
    scraped = daemon.log_text()
    assert KEY.decode() not in scraped


def test_record_json_is_the_record_as_compact_utf8_json(tmp_path):
    """The audit's record encoder on real and odd records: the same object back, compact,
    not ASCII-escaped, internal addresses pseudonymised."""
    import dataclasses

    from residency_monitor.audit import record_json

    recs = _sample_records()
    for path in corpus_files()[:20]:
        replay([path], recs.append, engine=Engine(sink=recs.append, enrich=Residency(
            default_policy(), Geolocator(GeoConfig()))))
    odd = dataclasses.replace(recs[0], tls_sni="naïve-\u2028\"q\"\\.example", notes=["a\nb", "ü"],
                              dst_as_org="Ω Networks\x00", detection_latency_s=1e-7,
                              ts_start=1.0e21, client_port=0, vlan=-1)
    p = Pseudonymizer(KEY, DEFAULT_INTERNAL)
    for rec in [*recs, odd]:
        text = record_json(rec)
        assert json.loads(text) == rec.to_dict()
        assert b"\n" not in text          # one line, whatever the strings hold
        assert json.loads(record_json(rec, p)) == p.record(rec.to_dict())
    assert "naïve".encode() in record_json(odd) and "Ω Networks".encode() in record_json(odd)
    internal = next(r for r in recs if r.direction == "outbound")
    assert internal.client_ip.encode() not in record_json(internal, p)
    assert json.loads(record_json(dataclasses.replace(recs[0], detection_latency_s=float(
        "nan"))))["detection_latency_s"] is None   # never produced; still valid JSON


def test_a_failed_first_open_continues_the_chain_when_it_succeeds(tmp_path):
    clock = Clock()
    write_log(tmp_path, 3, clock=clock)
    clock.t += 5
    blocker = AuditLog(tmp_path, clock=clock)   # holds the directory: the next open fails
    blocker.open(strict=True)
    late = AuditLog(tmp_path, clock=clock, compress=False)
    late.open()                                  # not strict: carries on without the log
    assert late.write_errors == 1 and late.append("verdict", {}) is None
    blocker.close()
    clock.t += 5
    assert late.append("verdict", {}) is not None
    late.close()
    res = verify([tmp_path])
    assert res.ok, res.summary()
