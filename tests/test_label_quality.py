"""Label-quality metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np

from rgvlm.evaluation.label_quality import auroc, average_ranks, label_quality, spearman
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
