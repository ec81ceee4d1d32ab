"""Evaluation: start states, vectorised rollouts, the bootstrap summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rgvlm.envs import SuiteBot, make_env, reset_quietly
from rgvlm.envs.seeds import FRESH_OFFSET, dataset_seed, fresh_seed, validation_seed
from rgvlm.evaluation import EvalEpisode, bootstrap_interval, evaluation_episodes, rollout, summarize
from rgvlm.params import EnvConfig, ParamError, evaluation_config


def test_splits_do_not_overlap(tiny_dataset):
    episodes = evaluation_episodes(tiny_dataset, (1, 2), ("seen", "fresh"), 3, 0)
    seen = {e.seed for e in episodes if e.split == "seen"}
    fresh = {e.seed for e in episodes if e.split == "fresh"}
    assert seen <= {e["seed"] for e in tiny_dataset.episodes}
    assert not seen & fresh and all(s >= FRESH_OFFSET for s in fresh)
    assert len(episodes) == 2 * 2 * 3
    assert len({dataset_seed(0, 5), validation_seed(0, 5), fresh_seed(0, 5)}) == 3
    with pytest.raises(ValueError, match="only"):
        evaluation_episodes(tiny_dataset, (1,), ("seen",), 100, 0)


def zero_missions(missions):
    return np.zeros((len(missions), 6, 384), dtype=np.float32)


def test_rollout_measures_completion(tiny_dataset):
    episodes = evaluation_episodes(tiny_dataset, (1, 2), ("fresh",), 2, 0)
    # A policy that only turns left never completes anything and runs to the time limit.
    records = rollout(lambda g, c, m: torch.zeros(g.shape[:2], dtype=torch.long), episodes, EnvConfig(),
                      zero_missions, num_runs=2)
    assert len(records) == 2
    for run_records in records:
        assert all(r["progress"] == 0 and not r["success"] for r in run_records)
        assert [r["steps"] for r in run_records] == [64 * (e.k + 1) for e in episodes]


def test_rollout_of_the_expert_succeeds():
    """The rollout's bookkeeping of success: drive it with the bot on a mirrored env (replay is
    deterministic, so the mirror stays in step with the rollout's own env)."""
    for k in (1, 3):
        start = EvalEpisode(k, "fresh", fresh_seed(0, k))
        mirror = make_env(f"RGVLM/Ordered-k{k}-v0")
        reset_quietly(mirror, start.seed)
        bot = SuiteBot(mirror)

        def act(grid, carry, mission, bot=bot, mirror=mirror):
            action = int(bot.replan())
            mirror.step(action)
            return torch.tensor([[action]])

        record = rollout(act, [start], EnvConfig(), zero_missions)[0][0]
        assert record["success"] and record["progress"] == k and record["completion"] == 1.0
        assert record["steps"] < 64 * (k + 1)


def test_bootstrap_interval_hand_checked():
    rng = np.random.default_rng(0)
    low, high = bootstrap_interval(np.array([0.5, 0.5, 0.5]), 500, rng)
    assert low == high == 0.5
    low, high = bootstrap_interval(np.array([0.0, 1.0]), 2000, rng)
    assert low == 0.0 and high == 1.0  # resamples of two seeds: means 0, 0.5 or 1
    assert bootstrap_interval(np.array([0.3]), 100, rng) == (0.3, 0.3)


def test_summarize_means_over_seeds():
    rows = [
        {"reward_set": "m", "run_seed": s, "split": "fresh", "k": 1, "completion": c, "success": c == 1.0}
        for s, values in ((0, [1.0, 0.0]), (1, [1.0, 1.0]), (2, [0.0, 0.0]))
        for c in values
    ]
    summary = summarize(pd.DataFrame(rows), samples=1000)
    row = summary.iloc[0]
    assert row["completion_mean"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert row["num_seeds"] == 3 and row["num_episodes"] == 6
    assert 0.0 <= row["completion_low"] <= row["completion_mean"] <= row["completion_high"] <= 1.0


@pytest.mark.parametrize(
    ("change", "key"),
    [({"ks": [1, 8]}, "evaluation.ks[1]"), ({"splits": ["seen", "test"]}, "evaluation.splits[1]"),
     ({"episodes_per_k": 0}, "evaluation.episodes_per_k"), ({"device": "tpu"}, "evaluation.device")],
)
def test_bad_evaluation_params(change, key):
    raw = {"seed": 0, "ks": [1], "splits": ["fresh"], "episodes_per_k": 2}
    with pytest.raises(ParamError) as error:
        evaluation_config({**raw, **change})
    assert error.value.key == key


def test_runs_rolled_out_together_equal_runs_rolled_out_alone(tiny_dataset):
    """Lockstep rollout of several runs (padded active sets) = each run on its own."""
    episodes = evaluation_episodes(tiny_dataset, (1, 2), ("seen", "fresh"), 2, 0)

    def policy(offset):
        # Deterministic in the observation, different per run: a pseudo-random walk.
        return lambda g, c, m: ((g.long().sum(dim=(-1, -2, -3)) * 7 + offset) % 6)

    def stacked(g, c, m):
        return torch.stack([policy(r)(g[r], c[r], m[r]) for r in range(g.shape[0])])

    together = rollout(stacked, episodes, EnvConfig(), zero_missions, num_runs=3)
    for r in range(3):
        alone = rollout(lambda g, c, m, r=r: policy(r)(g[0], c[0], m[0])[None], episodes, EnvConfig(), zero_missions)
        assert together[r] == alone[0]


def _mirrored_policy(episodes, config, runs, seed, epsilon, weights=None):
    """A policy that drives its own MiniGrid env per (run, episode) in step with the rollout, and
    checks on every call that the observations it is given are encode_observation's of its envs.
    Actions: the suite's bot with probability 1 - epsilon, else random (``weights`` over the six
    actions; pickup, drop and toggle weighted up exercise every branch of the array stepper)."""
    from rgvlm.data.collect import _Expert
    from rgvlm.envs import encode_observation, env_id_for

    mirrors = [[make_env(env_id_for(ep.k), **config.kwargs()) for ep in episodes] for _ in range(runs)]
    for row in mirrors:
        for env, ep in zip(row, episodes, strict=True):
            reset_quietly(env, ep.seed)
    experts = [[_Expert(env, state_view=False) for env in row] for row in mirrors]
    taken = [[None] * len(episodes) for _ in range(runs)]
    done = np.zeros((runs, len(episodes)), dtype=bool)
    rng = np.random.default_rng(seed)
    p = None if weights is None else np.asarray(weights, dtype=float) / sum(weights)

    def act(grid, carry, mission):
        actions = np.zeros(grid.shape[:2], dtype=np.int64)
        for r in range(runs):
            for j, e in enumerate(np.flatnonzero(~done[r])):  # the rollout's order of active episodes
                expected_grid, expected_carry = encode_observation(mirrors[r][e])
                assert np.array_equal(grid[r, j].numpy(), expected_grid)
                assert np.array_equal(carry[r, j].numpy(), expected_carry)
                action = experts[r][e].action(taken[r][e], rng)
                taken[r][e] = None
                if rng.random() < epsilon:
                    action = taken[r][e] = int(rng.choice(6, p=p))
                _, _, terminated, truncated, _ = mirrors[r][e].step(action)
                done[r, e] = terminated or truncated
                actions[r, j] = action
        return torch.as_tensor(actions)

    return act


@pytest.mark.parametrize("epsilon, weights", [(0.3, None), (0.7, [1, 1, 3, 3, 3, 3])])
def test_array_engine_equals_minigrid_engine(epsilon, weights):
    """The array stepper gives the records MiniGrid gives (steps, progress, success, actions) and the
    same observations on every step, for a noisy bot that completes sub-tasks and for a mostly random
    walk heavy in pickups, drops and toggles; on every k of the suite."""
    episodes = [EvalEpisode(k, "fresh", fresh_seed(0, i)) for k in range(1, 7) for i in range(2)]
    config = EnvConfig(room_size=5, steps_per_subtask=16)  # short time limits keep the test quick
    runs = 2
    results = {
        engine: rollout(_mirrored_policy(episodes, config, runs, 7, epsilon, weights), episodes, config, zero_missions,
                        num_runs=runs, record_actions=True, engine=engine)
        for engine in ("minigrid", "arrays")
    }
    assert results["arrays"] == results["minigrid"]
    flat = [record for run in results["arrays"] for record in run]
    assert sum(r["progress"] for r in flat) > 0 and not all(r["success"] for r in flat)


def test_array_engine_is_used_for_the_suite_and_refuses_what_it_does_not_model(monkeypatch):
    """engine='auto' takes the arrays for the suite's start states; a box (which toggling destroys)
    makes them refuse (so that 'auto' steps MiniGrid instead)."""
    import importlib

    rollout_module = importlib.import_module("rgvlm.evaluation.rollout")  # the package exports rollout()

    episodes = [EvalEpisode(2, "fresh", fresh_seed(0, 0))]
    used = []
    original = rollout_module._rollout_arrays
    monkeypatch.setattr(rollout_module, "_rollout_arrays", lambda *a, **k: used.append(1) or original(*a, **k))
    turn = lambda g, c, m: torch.zeros(g.shape[:2], dtype=torch.long)  # noqa: E731
    rollout(turn, episodes, EnvConfig(), zero_missions)
    assert used == [1]

    from minigrid.core.world_object import Box

    env = make_env("RGVLM/Ordered-k2-v0")
    reset_quietly(env, episodes[0].seed)
    env.unwrapped.grid.set(1, 1, Box("red"))
    assert rollout_module._ArrayStepper.from_envs([env], 1) is None
    with pytest.raises(ValueError, match="engine"):
        rollout(turn, episodes, EnvConfig(), zero_missions, engine="fast")
