"""Sweeps the DVC way on the tiny profile (README "Sweeps"): `dvc exp run -S train.beta=10` in the
workspace, and a queued grid run in DVC's temporary copies; `dvc exp show --json` lists each
experiment's parameter and Figure 4's numbers (reports/figure4.json, written by the report stage)."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from rgvlm.report import figure4_metrics
from rgvlm.rewards import fused_name
from rgvlm.rewards.registry import LABELLED_METHODS
from tests.tiny_project import default_status, run

pytestmark = pytest.mark.slow
FIGURE4 = "reports/figure4.json"
BASELINES = ("bc", "bc_success", "d3rlpy_bc", "d3rlpy_cql")


@pytest.fixture(scope="module")
def baseline(tiny_pipeline):
    """The tiny-profile clone, up to date and committed (a DVC experiment is a commit on top of its
    baseline); put back as it was after each test."""
    dst, env, _ = tiny_pipeline
    run(["dvc", "repro"], dst, env)  # up to date whatever the tests before left
    run(["git", "add", "-A"], dst, env)
    run(["git", "commit", "-qm", "baseline of the sweeps", "--allow-empty"], dst, env)
    yield dst, env
    back_to_baseline(dst, env)


def back_to_baseline(dst, env) -> None:
    """The workspace as the baseline commit and its dvc.lock have it (after an experiment was applied to it)."""
    run(["git", "reset", "-q", "--hard"], dst, env)
    # The default pipeline's outputs: the optional noise sweep (optional/dvc.yaml) has never run here,
    # so a checkout of every pipeline file would fail on its missing outputs.
    run(["dvc", "checkout", "--force", "-q", "dvc.yaml", "data.dvc"], dst, env)
    assert "up to date" in default_status(dst, env)


def experiments(dst, env) -> dict[str, dict]:
    """`dvc exp show --json`: every experiment of the baseline commit, by name: its rev and data
    (params and metrics, by file)."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], dst, env).stdout)
    head = next(row for row in shown if row["rev"] != "workspace")
    return {exp["name"]: exp["revs"][0] for exp in head["experiments"] or []}


def committed_json(dst, rev: str, path: str) -> dict:
    return json.loads(subprocess.run(["git", "show", f"{rev}:{path}"], cwd=dst, capture_output=True, check=True).stdout)


def test_exp_run_lists_the_figure4_metrics_with_the_new_parameter(baseline):
    dst, env = baseline
    try:  # in the workspace, which it leaves as the experiment's results
        ran = run(["dvc", "exp", "run", "-S", "train.beta=10", "--name", "beta-10"], dst, env).stdout
    finally:
        back_to_baseline(dst, env)
    assert {s for s in ("dataset_card", "rewards", "train", "peer", "evaluate", "report")
            if f"Running stage '{s}'" in ran} == {"train", "evaluate", "report"}
    exp = experiments(dst, env)["beta-10"]
    assert exp["error"] is None
    assert exp["data"]["params"]["params.yaml"]["data"]["train"]["beta"] == 10
    shown = exp["data"]["metrics"][FIGURE4]["data"]
    # What `dvc exp show` lists is the experiment's metrics file ...
    assert shown == committed_json(dst, exp["rev"], FIGURE4)
    # ... and those are Figure 4's numbers of the experiment's evaluation, which trained with beta 10.
    evaluation = committed_json(dst, exp["rev"], "reports/metrics/evaluation.json")
    assert evaluation["provenance"]["train"]["iql"]["beta"] == 10
    report = exp["data"]["params"]["params.yaml"]["data"]["report"]
    headline = fused_name("rg_vlm", float(report["headline_lambda"]))
    assert shown == figure4_metrics(pd.DataFrame(evaluation["summary"]), headline, report["split"], report["policy"])
    reward_sets = shown[report["split"]][report["policy"]]
    assert set(reward_sets) == {"sparse", "oracle", headline, *LABELLED_METHODS, *BASELINES}
    assert all(set(by_k) == {"k1", "k2"} and set(by_k["k1"]) == {"completion_mean", "completion_low", "completion_high"}
               for by_k in reward_sets.values())
    # The flat columns of the table view name the split, policy, reward set and k.
    csv = run(["dvc", "exp", "show", "--csv", "--drop", ".*", "--keep", r"Experiment|train\.beta|fresh\..*"], dst, env).stdout
    assert f"fresh.sampled.{headline}.k1.completion_mean" in csv.splitlines()[0]


def test_a_queued_grid_runs_each_value_in_its_own_copy(baseline):
    """Queued experiments run in copies under .dvc/tmp/exps; the stage notebooks write into their
    copy, not into the workspace (whose files stay the baseline's). The grid is over a report
    parameter, which reruns the report stage only (a training grid works the same, slower)."""
    dst, env = baseline
    before, known = (dst / FIGURE4).read_bytes(), set(experiments(dst, env))
    run(["dvc", "exp", "run", "--queue", "-S", "report.policy=greedy,sampled"], dst, env)
    try:
        run(["dvc", "exp", "run", "--run-all"], dst, env)
    finally:
        run(["dvc", "queue", "remove", "--all"], dst, env, check=False)  # nothing left queued or failed
    by_policy = {}
    for name, exp in experiments(dst, env).items():
        if name not in known:
            assert exp["error"] is None, (name, exp["error"])
            by_policy[exp["data"]["params"]["params.yaml"]["data"]["report"]["policy"]] = exp
    assert set(by_policy) == {"greedy", "sampled"}
    for policy, exp in by_policy.items():
        shown = exp["data"]["metrics"][FIGURE4]["data"]
        assert list(shown["fresh"]) == [policy] and shown == committed_json(dst, exp["rev"], FIGURE4)
    assert (dst / FIGURE4).read_bytes() == before
    assert run(["git", "status", "--porcelain"], dst, env).stdout == ""
