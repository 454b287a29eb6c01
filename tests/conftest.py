"""Shared test fixtures: where the shared corpus lives, and a skip when it is absent."""

from __future__ import annotations

import json
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
