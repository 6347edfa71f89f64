"""Datadriven Raft scenarios: each file in testdata/ is run and its printed output compared."""

from __future__ import annotations

from pathlib import Path

import pytest
from raft_harness import run_file

TESTDATA = Path(__file__).parent / "testdata"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    expected, actual = run_file(path)
    assert actual == expected, f"{path.name} differs (RAFT_REWRITE=1 to regenerate)"
