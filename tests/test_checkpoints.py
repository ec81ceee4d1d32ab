"""The multi-run stack checkpoint: it holds what exact resume needs and no more, it is written at
most every ``checkpoint_interval_s`` seconds, and the training stage reports each write."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rgvlm.params import ParamError, train_config
from rgvlm.rl.iql import IQLConfig, IQLLearner
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL, save_multirun
from rgvlm.rl.runs import (
    STACK_CHECKPOINT,
    checkpoint_summary,
    load_learner,
    load_stacked_policy,
    run_fingerprint,
    train_runs,
)
from rgvlm.rl.training import iql_config_for

HYPER = dict(batch_size=16, hidden_dim=32, num_layers=1, conv_channels=0, egocentric=True, obs_feature_dim=8,
             mission_feature_dim=8, state_feature_dim=16, slot_dim=8, lr=1e-3, log_every=5, checkpoint_every=10)


@pytest.fixture(scope="module")
def inputs(tiny_dataset):
    rng = np.random.default_rng(0)
    rewards = {name: rng.random(tiny_dataset.num_transitions).astype(np.float32) for name in ("a", "b")}
    table = torch.randn(len(tiny_dataset.missions), 6, 384, generator=torch.Generator().manual_seed(0))
    return tiny_dataset, table, rewards


def _stack(data, table, rewards, config, seeds=(0, 1, 2)):
    transitions = DeviceTransitions(data, [rewards["a"], rewards["b"]], table, "cpu", bc_weights=[rewards["a"] > 0.5])
    runs = [(row, seed) for row in (0, 1) for seed in seeds]
    bc_rows = [None] * (len(runs) - 1) + [1]  # the last run is a behaviour-cloning baseline
    trainer = MultiRunIQL(config, [s for _, s in runs], [row for row, _ in runs], bc_rows=bc_rows)
    return trainer, transitions


def _resume_bytes(config: IQLConfig, num_runs: int) -> int:
    """Parameters, target critic and Adam's two moments of every run, from the modules themselves."""
    learner = IQLLearner(config, seed=0)
    count = {name: sum(p.numel() * p.element_size() for p in getattr(learner, name).parameters())
             for name in ("critic", "value", "policy")}
    trained = count["critic"] + count["value"] + count["policy"]
    return num_runs * (trained + count["critic"] + 2 * trained)  # + target critic + exp_avg, exp_avg_sq


def test_stack_checkpoint_holds_what_resume_needs_and_no_more(inputs, tmp_path):
    data, table, rewards = inputs
    config = iql_config_for(data, HYPER)
    trainer, transitions = _stack(data, table, rewards, config)
    for _ in range(3):
        trainer.train_step(transitions)
    cost = save_multirun(trainer, tmp_path / STACK_CHECKPOINT, {"log": []})
    needed = _resume_bytes(config, trainer.num_runs)
    num_tensors = 3 * len(trainer.critic) + 2 * (len(trainer.value) + len(trainer.policy))
    # The tensors are exactly those (plus one 4-byte Adam step count per parameter tensor) ...
    assert needed <= cost["tensor_bytes"] <= needed + 8 * num_tensors
    # ... and the file is those bytes plus per-tensor headers: no copies, buffers or whole storages.
    size = (tmp_path / STACK_CHECKPOINT).stat().st_size
    assert cost["bytes"] == size and needed <= size <= 1.05 * needed + 512 * num_tensors + 16_384
    assert cost["write_s"] >= 0.0
    state = torch.load(tmp_path / STACK_CHECKPOINT, weights_only=True)
    assert all(t.dtype == torch.float32 for group in ("critic", "target_critic", "value", "policy")
               for t in state[group].values())


def test_resume_from_the_stack_checkpoint_is_exact(inputs, tmp_path):
    data, table, rewards = inputs
    config = iql_config_for(data, HYPER)
    whole, transitions = _stack(data, table, rewards, config)
    interrupted, _ = _stack(data, table, rewards, config)
    for _ in range(3):
        whole.train_step(transitions)
        interrupted.train_step(transitions)
    snapshot = whole.state_dict()  # a copy: training on does not change it
    save_multirun(interrupted, tmp_path / STACK_CHECKPOINT)  # the live tensors, not a copy
    for _ in range(4):
        whole.train_step(transitions)
        interrupted.train_step(transitions)  # training on after a save is unaffected by it
    assert not torch.equal(snapshot["policy"][next(iter(snapshot["policy"]))],
                           whole.policy[next(iter(whole.policy))])
    resumed, _ = _stack(data, table, rewards, config)
    resumed.load_state_dict(torch.load(tmp_path / STACK_CHECKPOINT, weights_only=True))
    assert resumed.step == 3
    for _ in range(4):
        resumed.train_step(transitions)
    for other in (interrupted, resumed):
        a, b = whole.state_dict(), other.state_dict()
        for group in ("critic", "target_critic", "value", "policy"):
            assert all(torch.equal(a[group][k], b[group][k]) for k in a[group]), group
        for group in ("critic_optim", "value_optim", "policy_optim"):
            for i, moments in a[group]["state"].items():
                assert all(torch.equal(v, b[group]["state"][i][k]) for k, v in moments.items()), group


def _rows(rows):
    return [{k: v for k, v in row.items() if not k.endswith("updates_per_s")} for row in rows]


def test_train_runs_reports_each_checkpoint(inputs, tmp_path):
    data, table, rewards = inputs
    config = iql_config_for(data, dict(HYPER, num_steps=30, holdout_fraction=0.2))
    report_path = tmp_path / "metrics" / "checkpoints.json"
    rows = train_runs(data, table, rewards, [0, 1], config, "cpu", tmp_path / "models",
                      checkpoint_report=report_path)
    report = json.loads(report_path.read_text())
    assert report["runs"] == report["runs_trained"] == 4 and report["resumed_from_step"] is None
    assert [c["step"] for c in report["stack_checkpoints"]] == [10, 20]
    assert report["stack_written"] == 2 and report["stack_skipped"] == 0
    for c in report["stack_checkpoints"]:
        assert c["bytes"] >= c["tensor_bytes"] >= _resume_bytes(config, 4) and c["write_s"] >= 0.0
    assert report["export_files"] == 4 and report["export_bytes"] > 0
    assert summary_ok(checkpoint_summary(report_path), written=2)
    # The critic diagnostic still runs at every checkpoint_every step.
    assert sorted({r["step"] for r in rows if "v_return_corr" in r}) == [10, 20, 30]
    # A rerun trains nothing and says so.
    train_runs(data, table, rewards, [0, 1], config, "cpu", tmp_path / "models", checkpoint_report=report_path)
    again = json.loads(report_path.read_text())
    assert again["runs_trained"] == 0 and again["stack_written"] == 0
    assert "none written" in checkpoint_summary(again)


def summary_ok(line: str, written: int) -> bool:
    return line.startswith(f"checkpoints: {written} stack checkpoints of 4 runs") and "\n" not in line


def test_checkpoint_interval_writes_less_and_changes_nothing_else(inputs, tmp_path):
    data, table, rewards = inputs
    often = iql_config_for(data, dict(HYPER, num_steps=30, holdout_fraction=0.2))
    rarely = iql_config_for(data, dict(HYPER, num_steps=30, holdout_fraction=0.2, checkpoint_interval_s=1e9))
    # Not part of what a run's result depends on.
    assert run_fingerprint(often, rewards["a"], data, 0) == run_fingerprint(rarely, rewards["a"], data, 0)
    rows = train_runs(data, table, rewards, [0, 1], often, "cpu", tmp_path / "often")

    class Crash(Exception):
        pass

    def crash_at_25(rows):
        if rows[0]["step"] == 25:
            raise Crash

    crashed, report_path = tmp_path / "rarely", tmp_path / "checkpoints.json"
    with pytest.raises(Crash):
        train_runs(data, table, rewards, [0, 1], rarely, "cpu", crashed, on_log=crash_at_25)
    assert not (crashed / STACK_CHECKPOINT).exists()  # the interval had not passed: nothing written
    resumed = train_runs(data, table, rewards, [0, 1], rarely, "cpu", crashed, checkpoint_report=report_path)
    report = json.loads(report_path.read_text())
    assert report["stack_written"] == 0 and report["stack_skipped"] == 2 and report["resumed_from_step"] is None
    assert _rows(resumed) == _rows(rows)  # losses and critic diagnostics at the same steps, bit for bit
    for name in rewards:
        for seed in (0, 1):
            a = load_learner(tmp_path / "often", name, seed, "cpu").policy.state_dict()
            b = load_learner(crashed, name, seed, "cpu").policy.state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_runs_checkpointed_at_other_intervals_evaluate_together(inputs, tmp_path):
    data, table, rewards = inputs
    for name, interval in (("a", 0), ("b", 1e9)):
        config = iql_config_for(data, dict(HYPER, num_steps=10, checkpoint_interval_s=interval))
        train_runs(data, table, {name: rewards[name]}, [0], config, "cpu", tmp_path)
    assert load_stacked_policy(tmp_path, [("a", 0), ("b", 0)], "cpu").num_runs == 2


def test_checkpoint_interval_is_validated():
    with pytest.raises(ValueError, match=r"train\.checkpoint_interval_s=-1 is invalid: expected a number >= 0"):
        IQLConfig(checkpoint_interval_s=-1)
    with pytest.raises(ValueError, match=r"train\.checkpoint_interval_s='often' is invalid"):
        IQLConfig(checkpoint_interval_s="often")
    raw = {"reward_sets": ["sparse"], "seeds": [0], "checkpoint_interval_s": float("inf")}
    with pytest.raises(ParamError, match=r"train\.checkpoint_interval_s=inf"):
        train_config(raw)
    assert train_config({**raw, "checkpoint_interval_s": 600}).iql.checkpoint_interval_s == 600


def test_a_checkpoint_older_than_a_config_field_loads_with_its_default(inputs):
    """A field added to IQLConfig after a checkpoint was written defaults to the behaviour before
    it, so the checkpoint loads; a checkpoint trained with another value does not."""
    data, _, _ = inputs
    config = iql_config_for(data, HYPER)
    state = IQLLearner(config, seed=0).state_dict()
    older = {**state, "config": {k: v for k, v in state["config"].items() if k != "advantage"}}
    IQLLearner(config, seed=1).load_state_dict(older)
    other = {**state, "config": {**state["config"], "advantage": "td"}}
    with pytest.raises(ValueError, match="advantage"):
        IQLLearner(config, seed=1).load_state_dict(other)
