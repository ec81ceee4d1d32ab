"""The multi-run IQL trainer: same updates as the eager learner, exact resume, independent runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rgvlm.rl.iql import IQLConfig, IQLLearner, TransitionBatch
from rgvlm.rl.multirun import MultiRunIQL, sample_indices, splitmix64
from rgvlm.rl.runs import STACK_CHECKPOINT, load_learner, load_stacked_policy, run_paths, train_runs
from rgvlm.rl.training import iql_config_for
from tests.test_iql import SMALL, _random_dataset

# The CPU profile's encoder (egocentric one-hot + Linear), shrunk.
ONE_HOT = dict(SMALL, conv_channels=0, egocentric=True, obs_feature_dim=16, state_feature_dim=32, hidden_dim=32)
# The critic and value heads read the policy encoder's features.
SHARED = dict(SMALL, shared_encoder=True)


def _stacked_batches(data, runs: int, batch_size: int, steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = data["action"].shape[0]
    for _ in range(steps):
        idx = torch.randint(n, (runs, batch_size), generator=g)
        yield idx, TransitionBatch(**{k: v[idx] for k, v in data.items()})


@pytest.mark.parametrize("overrides", [SMALL, ONE_HOT, SHARED], ids=["conv", "one-hot-egocentric", "shared-encoder"])
def test_stack_follows_eager_learners(overrides):
    """Run r of the stack = an eager IQLLearner with seed r fed the same batches."""
    config = IQLConfig(**overrides, batch_size=16)
    data = _random_dataset(64)
    seeds = [0, 1, 2]
    stack = MultiRunIQL(config, seeds)
    eager = [IQLLearner(config, seed=s) for s in seeds]
    for idx, batch in _stacked_batches(data, len(seeds), config.batch_size, steps=6):
        stacked_metrics = stack.update(batch)
        for r, learner in enumerate(eager):
            metrics = learner.update(TransitionBatch(**{k: v[idx[r]] for k, v in data.items()}))
            for name, value in metrics.items():
                torch.testing.assert_close(stacked_metrics[name][r], value, rtol=1e-4, atol=1e-5)
    for r, learner in enumerate(eager):
        exported, reference = stack.run_state(r), learner.state_dict()
        for group in ("critic", "target_critic", "value", "policy"):
            for key, tensor in reference[group].items():
                torch.testing.assert_close(exported[group][key], tensor, rtol=1e-4, atol=1e-5)
        # The exported state loads into an eager learner, optimiser moments included.
        clone = stack.learner(r)
        assert clone.step == learner.step == 6
        moments = clone.critic_optim.state_dict()["state"][0]["exp_avg"]
        torch.testing.assert_close(moments, learner.critic_optim.state_dict()["state"][0]["exp_avg"],
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compiled_update_equals_eager_update():
    config = IQLConfig(**ONE_HOT, batch_size=8)
    data = _random_dataset(32)
    eager, compiled = MultiRunIQL(config, [0, 1]), MultiRunIQL(config, [0, 1], compile=True)
    for _, batch in _stacked_batches(data, 2, config.batch_size, steps=3):
        a, b = eager.update(batch), compiled.update(batch)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    for group in ("critic", "value", "policy", "target_critic"):
        for key, tensor in getattr(eager, group).items():
            torch.testing.assert_close(getattr(compiled, group)[key], tensor, rtol=1e-4, atol=1e-5)


def test_cuda_graphs_flag_needs_a_gpu():
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        MultiRunIQL(IQLConfig(**SMALL), [0], cuda_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_captured_update_equals_eager_update_on_gpu():
    config = IQLConfig(**ONE_HOT, batch_size=8)
    data = {k: v.cuda() for k, v in _random_dataset(32).items()}
    eager = MultiRunIQL(config, [0, 1], device="cuda")
    captured = MultiRunIQL(config, [0, 1], device="cuda", cuda_graphs=True)
    for _, batch in _stacked_batches(data, 2, config.batch_size, steps=4):
        a, b = eager.update(batch), captured.update(batch)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4)


def test_sampler_is_a_pure_function_of_seed_and_step():
    seeds = torch.tensor([0, 1, 7])
    a = sample_indices(seeds, torch.tensor(5), 64, 1000)
    assert a.shape == (3, 64) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) < 1000
    # Run 7's batch does not depend on which runs share the stack, nor on the device layout.
    torch.testing.assert_close(sample_indices(torch.tensor([7]), torch.tensor(5), 64, 1000)[0], a[2])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], sample_indices(seeds, torch.tensor(6), 64, 1000)[0])
    # Roughly uniform: 100k draws over 10 bins.
    draws = sample_indices(torch.arange(100), torch.tensor(0), 1000, 10).flatten()
    counts = torch.bincount(draws, minlength=10).double()
    assert (counts / counts.sum() - 0.1).abs().max() < 0.01
    # splitmix64 of 0 is the published first output of the generator seeded with 0.
    assert splitmix64(torch.tensor([0])).item() == -2152535657050944081  # 0xE220A8397B1DCDAF as int64


# ------------------------------------------------------------------------------------------
# The training stage's driver: resume, skip finished runs, runs independent of the stack.
# ------------------------------------------------------------------------------------------

HYPER = dict(batch_size=16, hidden_dim=16, num_layers=1, conv_channels=0, egocentric=True, obs_feature_dim=8,
             mission_feature_dim=8, state_feature_dim=16, slot_dim=8, lr=1e-3, log_every=5, checkpoint_every=10)


@pytest.fixture(scope="module")
def run_inputs(tiny_dataset):
    rng = np.random.default_rng(0)
    rewards = {name: rng.random(tiny_dataset.num_transitions).astype(np.float32) for name in ("a", "b")}
    table = torch.randn(len(tiny_dataset.missions), 6, 384, generator=torch.Generator().manual_seed(0))
    return tiny_dataset, table, rewards


def _policy_weights(models_dir, name, seed):
    return load_learner(models_dir, name, seed, "cpu").policy.state_dict()


def test_train_runs_resumes_a_crashed_stack_exactly(run_inputs, tmp_path):
    data, table, rewards = run_inputs
    config = iql_config_for(data, dict(HYPER, num_steps=30))
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    rows = train_runs(data, table, rewards, [0, 1], config, "cpu", whole)
    assert {(r["reward_set"], r["seed"]) for r in rows} == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    assert sorted({r["step"] for r in rows}) == [5, 10, 15, 20, 25, 30]

    class Crash(Exception):
        pass

    def crash_at_25(rows):
        if rows[0]["step"] == 25:
            raise Crash

    with pytest.raises(Crash):
        train_runs(data, table, rewards, [0, 1], config, "cpu", crashed, on_log=crash_at_25)
    assert (crashed / STACK_CHECKPOINT).exists()  # the step-20 stack checkpoint survived
    resumed_rows = train_runs(data, table, rewards, [0, 1], config, "cpu", crashed)
    assert not (crashed / STACK_CHECKPOINT).exists()
    for name in rewards:
        for seed in (0, 1):
            a, b = _policy_weights(whole, name, seed), _policy_weights(crashed, name, seed)
            for key in a:
                assert torch.equal(a[key], b[key]), (name, seed, key)
    assert [r["critic_loss"] for r in resumed_rows] == [r["critic_loss"] for r in rows]


def test_train_runs_skips_finished_runs_and_runs_do_not_depend_on_their_stack(run_inputs, tmp_path):
    data, table, rewards = run_inputs
    config = iql_config_for(data, dict(HYPER, num_steps=10))
    train_runs(data, table, {"a": rewards["a"]}, [0], config, "cpu", tmp_path)
    checkpoint = run_paths(tmp_path, "a", 0)[0]
    before = checkpoint.stat().st_mtime_ns
    # Adding a reward set trains only the new runs; the finished one is not touched.
    train_runs(data, table, rewards, [0], config, "cpu", tmp_path)
    assert checkpoint.stat().st_mtime_ns == before
    alone = tmp_path / "alone"
    train_runs(data, table, {"b": rewards["b"]}, [0], config, "cpu", alone)
    a, b = _policy_weights(tmp_path, "b", 0), _policy_weights(alone, "b", 0)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # Changed rewards invalidate the run: it is trained again from scratch.
    train_runs(data, table, {"a": rewards["a"] * 2}, [0], config, "cpu", tmp_path)
    assert checkpoint.stat().st_mtime_ns != before
    assert json.loads(run_paths(tmp_path, "a", 0)[1].read_text())["seed"] == 0


def test_seeded_stacks_are_deterministic(run_inputs, tmp_path):
    data, table, rewards = run_inputs
    config = iql_config_for(data, dict(HYPER, num_steps=10))
    for folder in ("x", "y"):
        train_runs(data, table, rewards, [3], config, "cpu", tmp_path / folder)
    for name in rewards:
        a, b = _policy_weights(tmp_path / "x", name, 3), _policy_weights(tmp_path / "y", name, 3)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_stacked_policy_acts_like_each_learner(run_inputs, tmp_path):
    data, table, rewards = run_inputs
    config = iql_config_for(data, dict(HYPER, num_steps=10))
    train_runs(data, table, rewards, [0, 1], config, "cpu", tmp_path)
    runs = [("a", 0), ("b", 1), ("a", 1)]
    policies = load_stacked_policy(tmp_path, runs, "cpu")
    obs = torch.as_tensor(data.obs_grid[:12]), torch.as_tensor(data.obs_carry[:12])
    mission = table[:1].expand(12, -1, -1)
    stacked = policies(obs[0].expand(3, -1, -1, -1, -1), obs[1].expand(3, -1, -1), mission.expand(3, -1, -1, -1))
    for r, (name, seed) in enumerate(runs):
        assert torch.equal(stacked[r], load_learner(tmp_path, name, seed, "cpu").act(*obs, mission))
