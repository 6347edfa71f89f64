"""Recovery after a heal (``catenary faults heal``): a cut node is back and serving.

The real-process run cuts a follower of a 3-node cluster off its peers for a
few seconds under load, heals, and asserts that the node's links come back,
it catches up with the leader's commit index of the heal and serves a write
and a linearizable get through itself — within a generous bound: behaviour,
not timing (the figures are printed, and recorded in docs/faults.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from catenary.testing.faults import net
from catenary.testing.faults.heal import (
    HealOptions,
    HealReport,
    HealResult,
    format_table,
    parse_metrics,
    run_heals,
)

METRICS = """\
# HELP catenary_raft_term Current Raft term
# TYPE catenary_raft_term gauge
catenary_raft_term 4.0
catenary_raft_commit_index 1234.0
catenary_raft_applied_index 1230.0
catenary_raft_leader 2.0
catenary_raft_is_leader 0.0
catenary_peer_link_up{peer="1"} 1.0
catenary_peer_link_up{peer="2"} 0.0
catenary_requests_total{kind="put",outcome="ok"} 7.0
"""


def test_metrics_are_read_into_a_sample() -> None:
    sample = parse_metrics(METRICS, 0.25)
    assert (sample.term, sample.commit, sample.applied, sample.leader) == (4, 1234, 1230, 2)
    assert not sample.is_leader
    assert sample.links == {1: True, 2: False}


def test_a_heal_missing_a_figure_is_not_ok_and_the_table_says_so() -> None:
    done = HealResult(3, "follower", "both", 5.0, node=2, links_s=0.3, leader_s=0.1)
    done.caught_up_s = done.all_s = done.write_s = done.get_s = 0.2
    missing = HealResult(3, "leader", "out", 20.0, node=1, links_s=0.4)
    assert done.ok and done.worst_s == 0.3
    assert not missing.ok and missing.worst_s is None
    table = format_table([done, missing]).splitlines()
    assert table[0].split()[:4] == ["nodes", "target", "cut", "secs"]
    assert table[1].split()[-1] == "0.30" and table[2].split()[-1] == "-"
    report = HealReport(3, [done, missing])
    assert not report.ok
    assert json.loads(report.to_json())["heals"][0]["worst_s"] == 0.3


@pytest.mark.slow
@pytest.mark.xdist_group("faults")
@pytest.mark.timeout(120)
def test_a_follower_cut_off_catches_up_and_serves_after_the_heal(tmp_path: Path) -> None:
    reason = net.unavailable_reason()
    if reason is not None:
        pytest.skip(f"heal runs need network namespaces: {reason}")
    options = HealOptions(
        nodes=3,
        cuts_s=(2.5,),
        targets=("follower",),
        directions=("both",),
        bound_s=10.0,
        settle_s=0.0,
        directory=tmp_path,
    )
    printed: list[str] = []
    report = asyncio.run(run_heals(options, out=printed.append))
    print("\n".join(printed))
    print(report.table())
    assert not report.error, report.error
    assert len(report.results) == 1
    heal = report.results[0]
    assert heal.node != heal.leader_before  # a follower was cut
    assert heal.links_down_at_heal > 0  # the cut outlasted the idle bound: links were lost
    # Every figure reached within the bound: links up, on the leader's term, caught up
    # with the commit index of the heal, a write and a linearizable get served through it.
    assert heal.ok, report.table()
    assert heal.load_ok > 0
    # Nothing left behind: this harness's namespaces are gone.
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [x for x in listed.split() if x.startswith(f"cf{os.getpid():x}")]
