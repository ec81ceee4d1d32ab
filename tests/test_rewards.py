"""Reward methods: sparse, oracle, fusion; storage round trip."""

from __future__ import annotations

import numpy as np
import pytest

from rgvlm.params import ParamError, rewards_config
from rgvlm.rewards import (
    REWARD_METHODS,
    compute_reward_sets,
    fuse,
    load_rewards,
    oracle_rewards,
    save_rewards,
    sparse_rewards,
)
from rgvlm.rewards.base import RewardResult


def test_sparse_is_the_success_signal(tiny_dataset):
    r = sparse_rewards(tiny_dataset)
    assert r.rewards.sum() == sum(e["success"] for e in tiny_dataset.episodes)
    assert np.all(r.rewards[tiny_dataset.terminals] == 1.0)
    assert r.cost["lvlm_calls"] == 0 and r.provenance["lvlm"] is None


def test_oracle_sums_to_final_progress_per_episode(tiny_dataset):
    r = oracle_rewards(tiny_dataset)
    for index, e in enumerate(tiny_dataset.episodes):
        assert r.rewards[tiny_dataset.episode_steps(index)].sum() == e["final_progress"]
    assert set(np.unique(r.rewards)) <= {0.0, 1.0, 2.0, 3.0}


def test_fusion_hand_computed():
    sparse = RewardResult("sparse", np.array([0, 0, 1], dtype=np.float32), {"lvlm": None})
    dense = RewardResult("rg_vlm", np.array([0.2, 0.5, 1.0], dtype=np.float32), {"lvlm": {"backend": "scripted"}})
    fused = fuse(sparse, dense, 0.5)
    np.testing.assert_allclose(fused.rewards, [0.1, 0.25, 1.5])
    assert fused.reward_set == "sparse+rg_vlm@0.5" and fused.provenance["lvlm"] == {"backend": "scripted"}
    with pytest.raises(ValueError, match="lambda=-1"):
        fuse(sparse, dense, -1.0)
    with pytest.raises(ValueError, match="different datasets"):
        fuse(sparse, RewardResult("x", np.zeros(2, dtype=np.float32)), 1.0)


def test_rewards_must_be_finite():
    with pytest.raises(ValueError, match="NaN"):
        RewardResult("bad", np.array([0.0, np.nan]))


def test_compute_and_store_round_trip(tiny_dataset, tmp_path):
    results = compute_reward_sets(tiny_dataset, ("sparse", "oracle"), ("oracle",), (0.5, 1.0))
    assert [r.reward_set for r in results] == ["sparse", "oracle", "sparse+oracle@0.5", "sparse+oracle@1"]
    for r in results:
        save_rewards(tmp_path, r)
        loaded = load_rewards(tmp_path, r.reward_set)
        np.testing.assert_array_equal(loaded.rewards, r.rewards)
        assert loaded.provenance == r.provenance
    with pytest.raises(FileNotFoundError, match="rewards stage"):
        load_rewards(tmp_path, "rg_vlm")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"methods": ["sparse", "clip"]}, "rewards.methods[1]"),
        ({"methods": ["sparse"], "fusion": {"dense": ["oracle"], "lambdas": [1]}}, "rewards.fusion.dense[0]"),
        ({"methods": ["sparse", "oracle"], "fusion": {"dense": ["oracle"], "lambdas": [-2]}}, "rewards.fusion.lambdas[0]"),
        ({"methods": ["sparse", "oracle"], "fusion": {"dense": ["oracle"], "lambdas": []}}, "rewards.fusion.lambdas"),
    ],
)
def test_bad_reward_params(raw, key):
    with pytest.raises(ParamError) as error:
        rewards_config(raw, tuple(REWARD_METHODS))
    assert error.value.key == key
