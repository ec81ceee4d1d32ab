"""Label-quality metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np

from rgvlm.evaluation.label_quality import (
    auroc,
    average_ranks,
    label_quality,
    order_correlation,
    reward_values,
    spearman,
    value_order_correlation,
)
from rgvlm.rewards import oracle_rewards, sparse_rewards


def test_ranks_share_ties():
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])


def test_spearman_hand_computed():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == 1.0
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == -1.0
    # ranks x = (1, 2, 3), y = (1, 3, 2): 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5
    assert math.isclose(spearman(np.array([1, 2, 3]), np.array([5, 9, 7])), 0.5)
    assert math.isnan(spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))


def test_auroc_hand_computed():
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])) == 0.0
    # pairs (pos, neg): (0.5 vs 0.5) tie = 0.5, (0.5 vs 0.1) = 1, (0.3 vs 0.5) = 0, (0.3 vs 0.1) = 1 -> 2.5 / 4
    assert auroc(np.array([0.5, 0.3, 0.5, 0.1]), np.array([1, 1, 0, 0])) == 0.625
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([0, 0])))


def test_oracle_is_perfect_and_sparse_is_partial(tiny_dataset):
    oracle = label_quality(tiny_dataset, oracle_rewards(tiny_dataset).rewards)
    assert oracle["auroc_completion"] == 1.0 and oracle["spearman_progress"] > 0.99
    sparse = label_quality(tiny_dataset, sparse_rewards(tiny_dataset).rewards)
    assert 0.5 < sparse["auroc_completion"] < 1.0  # only the last sub-task of a success is rewarded


def test_order_correlation_by_hand():
    assert order_correlation(np.array([0.0, 0.1, 0.5, 0.9])) == 1.0  # a perfect ramp
    assert order_correlation(np.array([3.0, 2.0, 1.0, 0.0])) == -1.0  # reversed
    assert order_correlation(np.array([0.4, 0.4, 0.4])) == 0.0  # constant: no order, 0 and not NaN
    assert order_correlation(np.array([7.0])) == 0.0
    # ranks of (0, 2, 1, 3) against (1, 2, 3, 4): 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8
    assert math.isclose(order_correlation(np.array([0.0, 2.0, 1.0, 3.0])), 0.8)


class _Episodes:
    """The few fields VOC reads, for hand-made episodes."""

    def __init__(self, lengths, kinds):
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
        self.episodes = [{"length": n, "kind": k, "step_start": int(s)} for n, k, s in zip(lengths, kinds, starts, strict=True)]

    def episode_steps(self, index):
        e = self.episodes[index]
        return slice(e["step_start"], e["step_start"] + e["length"])


def test_voc_of_rewards_and_of_values_by_hand():
    data = _Episodes([4, 3, 2], ["expert", "expert", "noisy"])
    # Expert steps paid as the typical step (the median, 1): the running sums stay flat, no order.
    rewards = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=np.float64)
    np.testing.assert_array_equal(reward_values(data, rewards), [0, 0, 0, 0, 0, 0, 0, -1, -2])
    assert value_order_correlation(data, rewards) == 0.0
    # Median 0.5: the expert episodes' sums rise or stay (0.5, 0.5, 1, 1.5 and 0, 0.5, 1); the noisy
    # episode's fall, but it is not an expert episode.
    data = _Episodes([4, 3, 4], ["expert", "expert", "noisy"])
    rewards = np.array([1, 0.5, 1, 1, 0.5, 1, 1, 0, 0, 0, 0], dtype=np.float64)
    # ranks of (0.5, 0.5, 1, 1.5): (1.5, 1.5, 3, 4) -> rho = 4.5 / sqrt(5 * 4.5); (0, 0.5, 1) -> 1
    assert math.isclose(value_order_correlation(data, rewards), (4.5 / math.sqrt(5 * 4.5) + 1.0) / 2)
    assert value_order_correlation(data, -rewards) < -0.8
    assert value_order_correlation(data, np.full(11, 0.3)) == 0.0  # a constant reward
    # Values (a per-state progress): a ramp in each expert episode -> 1; reversed -> -1.
    ramp = np.array([0.1, 0.2, 0.3, 0.4, 0.2, 0.5, 0.9, 0.0, 0.0, 0.0, 0.0])
    assert value_order_correlation(data, np.zeros(11), ramp) == 1.0
    assert value_order_correlation(data, np.zeros(11), -ramp) == -1.0
    assert math.isnan(value_order_correlation(_Episodes([2, 3], ["noisy", "partial"]), np.zeros(5)))  # no expert


def test_voc_is_in_label_quality(tiny_dataset):
    oracle = label_quality(tiny_dataset, oracle_rewards(tiny_dataset).rewards)
    assert 0.5 < oracle["voc"] <= 1.0 and oracle["voc_source"] == "reward running sum" and oracle["voc_episodes"] > 0
    flat = label_quality(tiny_dataset, np.zeros(tiny_dataset.num_transitions, dtype=np.float32))
    assert flat["voc"] == 0.0
