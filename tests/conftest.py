"""Shared test fixtures: where the shared corpus lives, and a skip when it is absent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus" / "pcaps"


def corpus_files() -> list[Path]:
    """Every capture of the dev corpus (empty when ../shared is absent)."""
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))


def oracle(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".oracle.json").read_text())


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS} (it sits beside the checkout in CI)")
    return CORPUS


BENCH_GENERATOR = SHARED / "bench" / "make_bench_pcap.py"
BENCH_PACKETS = 100_000


@pytest.fixture(scope="session")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    """The first 100,000 packets of the office-gateway bench capture, with its truth file."""
    if not BENCH_GENERATOR.is_file():
        pytest.skip(f"bench generator not found at {BENCH_GENERATOR} "
                    "(../shared sits beside the checkout)")
    out = tmp_path_factory.mktemp("bench") / "bench.pcap"
    subprocess.run([sys.executable, str(BENCH_GENERATOR), "--packets", str(BENCH_PACKETS),
                    "--seed", "1", "--out", str(out)], check=True, capture_output=True)
    truth = json.loads(out.with_name(out.name + ".truth.json").read_text())
    return out, truth


# -- real interfaces ------------------------------------------------------------------

@pytest.fixture
def pair() -> Iterator:
    """Two network namespaces joined by a veth pair (tests/netns_fixture.py), removed after."""
    from netns_fixture import netns_pair
    with netns_pair() as p:
        yield p


@pytest.fixture
def sample_replay(tmp_path: Path) -> Path:
    """The bundled sample with foreign destination MACs, so namespace B's kernel never
    answers the frames tcpreplay sends it (the daemon still captures them)."""
    from netns_fixture import write_pcap

    from residency_monitor.capture.files import open_capture
    from residency_monitor.sample import SAMPLE_PATH
    out = tmp_path / "sample-replay.pcap"
    with open_capture(SAMPLE_PATH) as reader:
        write_pcap(out, reader)
    return out
