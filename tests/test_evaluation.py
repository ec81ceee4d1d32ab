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
