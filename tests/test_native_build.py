"""The native library's build (``repact/_native/__init__.py``): every file the C sources include
from the package is part of the build's cache key, so a changed header builds afresh."""

import re
import shutil

import pytest

from repact import _native


def test_every_included_package_header_is_in_the_cache_key():
    included = {name for src in _native._SOURCES
                for name in re.findall(r'^#include "([^"]+)"', src.read_text(), re.M)}
    assert included == {h.name for h in _native._HEADERS}
    assert all(h.is_file() for h in _native._HEADERS)


def test_a_changed_header_gets_its_own_build_folder(tmp_path, monkeypatch):
    cc = _native._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    header = tmp_path / "simd.h"
    shutil.copyfile(_native._HEADERS[0], header)
    monkeypatch.setattr(_native, "_HEADERS", (header,))
    before = _native._build_dir(cc)
    assert _native._build_dir(cc) == before
    header.write_text(header.read_text() + "/* changed */\n")
    assert _native._build_dir(cc) != before
