"""Every experiment (``python -m experiments.<name>``) end to end on the tiny profile: a few updates,
one or two seeds, a few episodes, everything written into a temporary folder. Smoke tests: they
check the structure and the sanity of what each writes, not its numbers. (The noise sweep is a
pipeline stage now, outside the default `dvc repro`: tests/test_noise_sweep.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.cli import build_dataset
from rgvlm.data import load_dataset
from rgvlm.params import load_profile
from rgvlm.rewards import oracle_rewards, save_rewards, sparse_rewards

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--profile", "tiny"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny profile's dataset (k = 1, 2; 6 episodes each), collected the way the experiments
    collect theirs (``experiments.cli.build_dataset``: ``python -m rgvlm.data collect``)."""
    return build_dataset({}, {}, tmp_path_factory.mktemp("experiment-data"), load_profile("tiny"))


def _in_unit_interval(values) -> bool:
    values = np.asarray(list(values), dtype=float)
    return bool(values.size) and bool(np.all((values >= 0.0) & (values <= 1.0)))


def test_the_experiments_run_as_modules_and_reach_the_package_without_path_edits():
    for path in sorted((ROOT / "experiments").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "sys.path" not in text and "noqa: E402" not in text, path.name
    done = subprocess.run([sys.executable, "-m", "experiments.tune_iql", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0 and "python -m experiments.tune_iql" in done.stdout, done.stderr[-2000:]


@pytest.mark.slow
def test_learning_evaluates_on_schedule_saves_models_and_action_ranking_reads_them(tiny_data, tmp_path):
    from experiments import action_ranking, learning

    models = tmp_path / "models"
    argv = [*TINY, "--name", "smoke", "--data-root", str(tiny_data.parent), "--out", str(tmp_path),
            "--reward-sets", "sparse", "oracle", "bc_success", "--seeds", "0", "1", "--steps", "4", "--eval-every", "2",
            "--ks", "1", "--episodes", "2", "--temperatures", "0.5", "--save-models", str(models), "--diagnose"]
    assert learning.main(argv) == 0
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert {"command", "split", "dataset", "training_seeds", "base_train", "seconds", "summary", "critic",
            "chaining"} <= set(result)
    assert result["command"].startswith("python -m experiments.learning --profile tiny")
    assert result["dataset"]["num_episodes"] == 12 and result["seconds"]["base"]["updates"] == 4
    rows = {(r["reward_set"], r["policy"], r["updates"]) for r in result["summary"]}
    assert rows == {(name, policy, updates) for name in ("sparse", "oracle", "bc_success")
                    for policy in ("greedy", "sampled@0.5") for updates in (2, 4)}
    assert all(r["num_seeds"] == 2 and r["num_episodes"] == 4 and r["k"] == 1 for r in result["summary"])
    assert _in_unit_interval(r[key] for r in result["summary"] for key in ("completion_mean", "success_mean"))
    # The critic diagnostic of every run at both evaluations (the tiny profile holds episodes out).
    assert len(result["critic"]) == 3 * 2 * 2
    assert all(-1.0 <= r["v_return_corr"] <= 1.0 and r["adv_weight_p90"] > 0 for r in result["critic"])
    assert result["chaining"]  # the last evaluation's episodes were replayed
    assert all(0 < r["adv_weight_p10"] <= r["adv_weight_p90"] for r in result["critic"])
    # The last evaluation's rows paired by layout against sparse, with Holm's verdicts, and the
    # per-layout cells they were computed from.
    contrasts = {(r["variant"], r["policy"], r["row"], r["reference"], r["k"]) for r in result["paired"]}
    assert contrasts == {("base", policy, row, "sparse", 1) for policy in ("greedy", "sampled@0.5")
                         for row in ("oracle", "bc_success")}
    assert all(r["num_layouts"] == 2 and r["low"] <= r["difference"] <= r["high"]
               and r["verdict"] in ("above", "below", "not resolved") for r in result["paired"])
    layouts = pd.read_csv(tmp_path / result["per_layout"])
    assert len(layouts) == 3 * 2 * 2 and set(layouts["num_seeds"]) == {2}
    # --save-models: the pipeline's layout, which action_ranking reads.
    runs = json.loads((models / "base" / "runs.json").read_text())
    assert [tuple(run) for run in runs["runs"]] == [(n, s) for n in ("sparse", "oracle", "bc_success") for s in (0, 1)]
    assert Path(runs["data"]) == tiny_data
    ranking = tmp_path / "ranking.json"
    assert action_ranking.main(["--models", str(models / "base"), "--out", str(ranking)]) == 0
    ranked = json.loads(ranking.read_text())
    assert len(ranked["runs"]) == 6 and set(ranked["summary"]) == {"sparse", "oracle", "bc_success"}
    assert _in_unit_interval(run["q_agree_expert"] for run in ranked["runs"])
    # Mean advantage weights of the held-out partial episodes' bot and random steps: positive, or
    # NaN where the tiny profile's few held-out episodes have no such step.
    weights = np.array([run[key] for run in ranked["runs"] for key in ("weight_bot", "weight_random")], dtype=float)
    assert np.all(np.isnan(weights) | (weights > 0))


@pytest.mark.slow
def test_imitability_fits_each_subset_and_evaluates_it(tiny_data, tmp_path):
    from experiments import imitability

    argv = [*TINY, "--name", "imit", "--data-root", str(tiny_data.parent), "--out", str(tmp_path), "--steps", "3",
            "--episodes", "2"]
    assert imitability.main(argv) == 0
    result = json.loads((tmp_path / "imit.json").read_text())
    assert result["command"].startswith("python -m experiments.imitability") and result["steps"] == 3
    assert [r["subset"] for r in result["results"]] == ["expert", "successful"]
    data = load_dataset(tiny_data)
    for r in result["results"]:
        assert 0 < r["transitions"] < data.num_transitions
        assert _in_unit_interval([r["train_accuracy"], r["mission_swap_changed"], r["validation_completion"]])
        assert sum(kind["episodes"] for kind in r["validation_completion_by_kind"].values()) == 2


@pytest.mark.slow
def test_tune_iql_trains_each_variant_on_the_rewards_stage_output(tiny_data, tmp_path):
    from experiments import tune_iql

    data = load_dataset(tiny_data)
    rewards = tmp_path / "rewards"
    for result in (sparse_rewards(data), oracle_rewards(data)):
        save_rewards(rewards, result)
    argv = [*TINY, "--name", "tune", "--data", str(tiny_data), "--rewards", str(rewards), "--out", str(tmp_path),
            "--reward-sets", "sparse", "oracle", "--seeds", "0", "--steps", "4", "--eval-every", "2", "--ks", "1", "2",
            "--episodes", "1", "--variant", "tau=0.8", "--variant", "beta=10"]
    assert tune_iql.main(argv) == 0
    result = json.loads((tmp_path / "tune.json").read_text())
    assert set(result["seconds"]) == {"tau=0.8", "beta=10"} and result["training_seeds"] == [0]
    rows = {(r["variant"], r["updates"], r["reward_set"], r["k"]) for r in result["summary"]}
    assert rows == {(v, u, n, k) for v in ("tau=0.8", "beta=10") for u in (2, 4) for n in ("sparse", "oracle")
                    for k in (1, 2)}
    assert _in_unit_interval(r["completion_mean"] for r in result["summary"])


@pytest.mark.slow
def test_d3rlpy_peer_trains_and_evaluates(tiny_data, tmp_path):
    pytest.importorskip("d3rlpy")
    from experiments import d3rlpy_peer

    out = tmp_path / "peer.json"
    argv = ["--data", str(tiny_data), "--steps", "5", "--seeds", "0", "--episodes", "1", "--ks", "1", "--out", str(out)]
    assert d3rlpy_peer.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m experiments.d3rlpy_peer")
    assert result["summary"] and _in_unit_interval(r["completion_mean"] for r in result["summary"])
