"""Fixtures shared by the storage tests: every conformance test runs on both file systems."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from random import Random

import pytest
from storage_helpers import FsCase

from catenary.storage.fs import OsFileSystem
from catenary.storage.fs_sim import SimFileSystem


@pytest.fixture(params=["os", "sim"])
def fscase(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FsCase]:
    if request.param == "os":
        yield FsCase(OsFileSystem(), str(tmp_path), "os")
    else:
        fs = SimFileSystem(Random(1234))
        fs.mkdir("/sim/root")
        yield FsCase(fs, "/sim/root", "sim")


@pytest.fixture
def simfs() -> SimFileSystem:
    return SimFileSystem(Random(42))
