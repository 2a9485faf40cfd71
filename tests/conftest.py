"""Shared fixtures: the real-data folder, seeding, and a bound on threads."""

from __future__ import annotations

import os
from pathlib import Path

import PIL.Image
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REPACT_SHARED_DATA", ROOT.parent / "shared" / "data"))
#: functions a third-party import may replace process-wide (importing ultralytics, which the optional
#: integration's tests do even at collection, patches both: an unidentified image then makes PIL
#: try to pip-install a HEIF plugin, so an unreadable-image test would see another error)
_PRISTINE = {(PIL.Image, "open"): PIL.Image.open, (torch, "save"): torch.save}


def shared_data(sub: str) -> Path:
    """Path under ../shared/data, or skip the test with a clear message when it is absent."""
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"real data not available: {p} is absent (set REPACT_SHARED_DATA to its folder)")
    return p


@pytest.fixture(autouse=True)
def _undo_third_party_patches():
    """Every test starts with PIL's and torch's own functions, whatever a collected module imported."""
    for (owner, name), fn in _PRISTINE.items():
        setattr(owner, name, fn)
    yield


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One intra-op thread: the models here are small, and on a shared 2-core CPU a second thread
    mostly waits at OpenMP barriers (tests that need several threads set them themselves)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    """Decoded-image caches built by the tests (and the CLI subprocesses they start) go to a
    temporary folder, not to ~/.cache/repact."""
    old = os.environ.get("REPACT_DATA_CACHE")
    os.environ["REPACT_DATA_CACHE"] = str(tmp_path_factory.mktemp("data_cache"))
    yield
    if old is None:
        os.environ.pop("REPACT_DATA_CACHE", None)
    else:
        os.environ["REPACT_DATA_CACHE"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data_dir():
    return shared_data("")


def pytest_collection_modifyitems(config, items):
    """The ``slow`` tests first (in their order): with one test sent to a worker at a time
    (``--maxschedchunk 1`` in the Makefile), the long ones spread over the workers early instead of
    keeping one worker busy after the other has finished."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
