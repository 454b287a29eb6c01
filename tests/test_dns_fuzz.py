"""Fuzzing the DNS parser and flooding the name map: only the contract may happen.

As for the TLS parsers: real responses (from the corpus when it is present,
hand-made ones always) cut at every offset with random bytes appended, with
bytes flipped, pure noise, and messages made of random labels and
compression pointers. :func:`parse_message` may return a message or raise
ParseError, nothing else; every name it returns fits in 255 bytes of wire
form. :class:`NameMap` is held to a simple reference model under random
answers, and a flood of a million random answers must leave it within its
bound.
"""

from __future__ import annotations

import random
import re
import struct
import time
import tracemalloc
from collections import OrderedDict

import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dns import (
    DNS_CAPTURES,
    TYPE_A,
    a,
    answer,
    cname_chain_response,
    dns_payloads,
    header,
    message,
    opt,
    ptr,
    rr,
    svcb_rdata,
    wname,
)

from residency_monitor.dns import (
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_HTTPS,
    DnsMessage,
    NameMap,
    ParseError,
    Svcb,
    parse_message,
    split_tcp_messages,
)

FUZZ = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _synthetic() -> list[bytes]:
    https = svcb_rdata(1, ".", [(1, b"\x02h3\x02h2"), (4, a("192.0.2.1") + a("192.0.2.2")),
                                (5, b"\x00\x04ABCD"), (6, a("2001:db8::1"))])
    soa = wname("ns1.example.com") + b"\x0ahostmaster" + ptr(12) + struct.pack("!5I", *range(5))
    return [
        cname_chain_response(),
        message("svc.example", TYPE_HTTPS, [rr(ptr(12), TYPE_HTTPS, https)], additional=[opt()]),
        message("example.com", TYPE_AAAA, [rr(ptr(12), TYPE_AAAA, a("2001:db8::2"))],
                authority=[rr(ptr(12), 6, soa)], additional=[opt()]),
        message("example.com", TYPE_A, flags=0x0100),
    ]


def _real() -> list[bytes]:
    if not CORPUS.is_dir():
        return []
    # every distinct message of the corpus, the larger responses first (most structure)
    msgs = {m for p in DNS_CAPTURES for _ts, _s, _d, m in dns_payloads(p)}
    return sorted(msgs, key=len, reverse=True)


SAMPLES = _synthetic() + _real()


def check(data: bytes) -> DnsMessage | None:
    """Parse; ParseError is an allowed outcome. Whatever parses must make sense."""
    try:
        msg = parse_message(data)
    except ParseError:
        return None
    assert isinstance(msg, DnsMessage)
    names = [q.name for q in msg.questions] + [r.name for r in msg.answers]
    names += [r.data for r in msg.answers if r.rtype == TYPE_CNAME]  # type: ignore[misc]
    names += [r.data.target for r in msg.answers if isinstance(r.data, Svcb)]
    for name in names:
        assert isinstance(name, str) and name.isascii()
        assert wire_length(name) <= 255, name
    for r in msg.answers:
        if r.rtype in (TYPE_A, TYPE_AAAA):
            assert isinstance(r.data, bytes) and len(r.data) == (4 if r.rtype == TYPE_A else 16)
    return msg


_ESCAPE = re.compile(r"\\\d{3}")


def wire_length(name: str) -> int:
    """The wire length of a name in presentation form (escapes count one byte)."""
    if name == ".":
        return 1
    return sum(len(_ESCAPE.sub("x", label)) + 1 for label in name.split(".")) + 1


def test_samples_are_real():
    assert all(check(s) is not None for s in SAMPLES)
    if CORPUS.is_dir():
        assert len(SAMPLES) > 100 and max(map(len, SAMPLES)) > 1000


@pytest.mark.parametrize("index", range(len(SAMPLES)))
def test_every_cut_of_a_real_message(index: int):
    sample = SAMPLES[index]
    full = check(sample)
    for cut in range(len(sample)):
        msg = check(sample[:cut])
        if msg is not None and full is not None:
            # a prefix that parses is the same message (the cut fell in the sections
            # that are walked, not kept, and is reported)
            assert msg.answers == full.answers and msg.questions == full.questions


def _cut_and_append() -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        sample = draw(st.sampled_from(SAMPLES))
        cut = draw(st.integers(0, len(sample)))
        return sample[:cut] + draw(st.binary(max_size=64))

    return build()


def _flip_bytes() -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(SAMPLES)))
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)

    return build()


@FUZZ
@given(_cut_and_append())
def test_cut_and_appended(data: bytes):
    check(data)


@FUZZ
@given(_flip_bytes())
def test_flipped_bytes(data: bytes):
    check(data)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes):
    check(data)


@FUZZ
@given(st.binary(max_size=40))
def test_random_bytes_after_a_valid_header(data: bytes):
    check(header(2, 2, 1, 1) + data)


@st.composite
def pointer_soup(draw: st.DrawFn) -> bytes:
    """A header claiming names, then random labels, pointers anywhere, and zeros."""
    body = bytearray(header(*draw(st.tuples(*[st.integers(0, 6)] * 4))))
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            body += b"\x00"
        elif kind == 1:
            label = draw(st.binary(min_size=1, max_size=63))
            body += bytes((len(label),)) + label
        elif kind == 2:
            body += draw(st.binary(min_size=1, max_size=12))
        else:  # pointers, often at or after themselves (loops), sometimes backwards
            body += ptr(draw(st.integers(0, len(body) + 16)))
    return bytes(body)


@FUZZ
@given(pointer_soup())
def test_compression_pointer_soup(data: bytes):
    check(data)


@FUZZ
@given(st.lists(st.integers(0, 60), min_size=1, max_size=30))
def test_pointer_chains_always_end(targets: list[int]):
    # a message of nothing but pointers: every one either points backwards (and the
    # chain ends at offset < 12, in the header) or is refused; never a hang
    body = header(len(targets)) + b"".join(ptr(t) + b"\0\1\0\1" for t in targets)
    check(body)


def test_worst_case_message_is_bounded():
    # One long name, then thousands of names each a label and a pointer into it: the
    # suffix cache keeps the cost linear. Printed, not asserted (no timing asserts).
    base = header(0, 0, 0, 0)
    long_name = wname(".".join(["x" * 60] * 4))  # 245 bytes
    body = base + long_name + b"\0\1\0\1"
    count = 0
    while len(body) < 65000:
        body += b"\x01y" + ptr(12) + b"\0\1\0\1"
        count += 1
    body = header(count + 1) + body[12:]
    t = time.perf_counter()
    msg = parse_message(body)
    took = time.perf_counter() - t
    assert len(msg.questions) == count + 1
    print(f"\n{count} questions sharing one 245-byte suffix parsed in {took * 1e3:.1f} ms")


@FUZZ
@given(st.binary(max_size=300))
def test_split_tcp_messages_contract(stream: bytes):
    try:
        msgs, used = split_tcp_messages(stream)
    except ParseError:
        return
    rebuilt = b"".join(struct.pack("!H", len(m)) + m for m in msgs)
    assert stream[:used] == rebuilt and 0 <= used <= len(stream)
    assert all(len(m) >= 12 for m in msgs)


# --------------------------------------------------------------------------
# NameMap against a reference model
# --------------------------------------------------------------------------

class Model:
    """The documented behaviour, written plainly: lists of slots, no flat tuples."""

    def __init__(self, max_entries: int, max_names: int, max_clients: int, floor: float):
        self.m: OrderedDict[bytes, list[list]] = OrderedDict()
        self.max_entries, self.max_names, self.max_clients = max_entries, max_names, max_clients
        self.floor = floor
        self.evicted = self.expired = 0

    def learn(self, name: str, addr: bytes, client: bytes, ttl: int, now: float) -> None:
        expires = now + min(max(float(ttl), self.floor), 86_400.0)
        if addr not in self.m:
            if len(self.m) >= self.max_entries:
                self.m.popitem(last=False)
                self.evicted += 1
            self.m[addr] = []
        else:
            self.m.move_to_end(addr)
            self.m[addr] = [s for s in self.m[addr] if s[1] > now]
        slots = self.m[addr]
        old = next((s for s in slots if s[0] == name), None)
        if old is None:
            slot = [name, expires, [(client, expires)]]
        else:
            slots.remove(old)
            others = [(c, e) for c, e in old[2] if c != client]
            slot = [name, max(expires, old[1]), ([(client, expires)] + others)[:self.max_clients]]
        slots.insert(0, slot)
        del slots[self.max_names:]
        for _ in range(2):
            first = next(iter(self.m))
            if any(s[1] > now for s in self.m[first]):
                break
            del self.m[first]
            self.expired += 1

    def names_for(self, client: bytes, addr: bytes, now: float, fallback: bool) -> tuple:
        live = [s for s in self.m.get(addr, []) if s[1] > now]
        mine = tuple(s[0] for s in live if any(c == client and e > now for c, e in s[2]))
        if mine or not fallback:
            return mine
        return tuple(s[0] for s in live)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.m), "names": sum(map(len, self.m.values())),
                "evicted": self.evicted, "expired": self.expired}


NAMES = [f"n{i}.example" for i in range(6)]
ADDRS = [bytes((192, 0, 2, i)) for i in range(6)]
CLIENTS = [bytes((10, 0, 0, i)) for i in range(4)]

op = st.one_of(
    st.tuples(st.just("learn"), st.sampled_from(NAMES), st.sampled_from(ADDRS),
              st.sampled_from(CLIENTS), st.sampled_from([0, 5, 30, 100, 10**6]),
              st.sampled_from([0.0, 0.0, 1.0, 7.0, 40.0])),
    st.tuples(st.just("ask"), st.sampled_from(CLIENTS), st.sampled_from(ADDRS), st.booleans(),
              st.sampled_from([0.0, 3.0, 50.0])),
)


@FUZZ
@given(st.lists(op, max_size=60), st.integers(1, 5), st.integers(1, 4), st.integers(1, 3))
def test_namemap_matches_the_model(ops, max_entries, max_names, max_clients):
    nm = NameMap(max_entries=max_entries, max_names_per_address=max_names, ttl_floor=10.0,
                 max_clients_per_name=max_clients)
    model = Model(max_entries, max_names, max_clients, 10.0)
    now = 0.0
    for o in ops:
        if o[0] == "learn":
            _, name, addr, client, ttl, step = o
            now += step
            nm.learn(answer(name, [(name, TYPE_A, addr, ttl)]), client, now)
            model.learn(name, addr, client, ttl, now)
        else:
            _, client, addr, fallback, ahead = o
            assert nm.names_for(client, addr, now + ahead, fallback) == \
                model.names_for(client, addr, now + ahead, fallback)
        assert nm.stats == model.stats()
        assert len(nm) <= max_entries


# --------------------------------------------------------------------------
# Floods
# --------------------------------------------------------------------------

def _a_flood_message(rng: random.Random, n: int) -> bytes:
    qname = f"h{rng.getrandbits(40):x}.flood.example"
    return message(qname, TYPE_A,
                   [rr(ptr(12), TYPE_A, rng.randbytes(4), ttl=rng.choice((0, 60, 86400 * 7)))
                    for _ in range(n)])


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def test_flood_of_a_million_random_answers_stays_within_the_bound():
    rng = random.Random(2024)
    per_message = 20
    messages = 50_000                 # 1,000,000 A records at random addresses
    nm = NameMap()
    rss_before, _ = _rss_mib()
    t = time.perf_counter()
    peak_entries = 0
    client = a("10.9.9.9")
    for i in range(messages):
        msg = parse_message(_a_flood_message(rng, per_message))
        nm.learn(msg, client, 1_700_000_000.0 + i * 0.01)
        peak_entries = max(peak_entries, len(nm))
    took = time.perf_counter() - t
    rss_after, rss_peak = _rss_mib()
    stats = nm.stats
    assert peak_entries == 200_000 and stats["entries"] <= 200_000
    assert stats["entries"] <= stats["names"] <= stats["entries"] + 100  # a few collisions
    assert stats["evicted"] + stats["expired"] + stats["entries"] >= 999_000  # bar collisions
    print(f"\nflood: 1,000,000 A answers parsed and learned in {took:.1f} s; map {stats}; "
          f"process RSS {rss_before:.0f} -> {rss_after:.0f} MiB (+{rss_after - rss_before:.0f}),"
          f" peak RSS {rss_peak:.0f} MiB")


def test_namemap_memory_per_address():
    # tracemalloc slows learning tenfold, so it measures a smaller map
    rng = random.Random(7)
    msgs = [parse_message(_a_flood_message(rng, 20)) for _ in range(2_500)]  # 50,000 addresses
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        nm = NameMap()
        for i, msg in enumerate(msgs):
            nm.learn(msg, bytes((10, 0, i >> 8 & 255, i & 255)), 1_700_000_000.0 + i)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per = used / len(nm)
    print(f"\nNameMap: {per:.0f} B per address with one name (names of 29 characters)")
    assert len(nm) > 49_900 and per < 1024  # random addresses: a few coincide


def test_flood_of_names_and_clients_for_one_address_stays_within_the_bound():
    ip = a("104.16.0.1")
    nm = NameMap(max_entries=10)
    # one answer with a 16-hop CNAME chain, thousands of times with fresh names
    for i in range(2000):
        chain = [(f"c{i}-{j}.example", TYPE_CNAME, f"c{i}-{j + 1}.example", 300)
                 for j in range(16)]
        chain.append((f"c{i}-16.example", TYPE_A, ip, 300))
        nm.learn(answer(f"c{i}-0.example", chain), a("10.0.0.1"), float(i))
    assert len(nm.names_for(a("10.0.0.1"), ip, 2000.0)) == 8
    # thousands of clients resolving the same name
    for i in range(5000):
        nm.learn(answer("popular.example", [("popular.example", TYPE_A, ip, 300)]),
                 struct.pack("!I", 0x0A000000 + i), 2000.0)
    assert nm.stats == {"entries": 1, "names": 8, "evicted": 0, "expired": 0}
    assert nm.names_for(struct.pack("!I", 0x0A000000 + 4999), ip, 2001.0,
                        fallback=False) == ("popular.example",)
    assert nm.names_for(struct.pack("!I", 0x0A000000), ip, 2001.0, fallback=False) == ()
    assert len(nm._clients) <= 4 * nm.max_entries + 1
    # answers with hundreds of addresses
    many = [("wide.example", TYPE_A, struct.pack("!I", 0xC0000000 + i), 300) for i in range(500)]
    nm.learn(answer("wide.example", many), a("10.0.0.1"), 2002.0)
    assert len(nm) == 10 and nm.stats["evicted"] == 491
