"""Shared fixtures: the real-data folder, seeding, and a bound on threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REPACT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_data(sub: str) -> Path:
    """Path under ../shared/data, or skip the test with a clear message when it is absent."""
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"real data not available: {p} is absent (set REPACT_SHARED_DATA to its folder)")
    return p


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data_dir():
    return shared_data("")
