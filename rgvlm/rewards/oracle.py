"""The oracle: ground-truth sub-task progress, the upper bound for any dense reward.

Reward = number of sub-tasks the step completed (usually 0 or 1), read from the
dataset's privileged progress. No learner could have it; it is plotted as a reference.
"""

from __future__ import annotations

import time

import numpy as np

from rgvlm.data.storage import OfflineDataset
from rgvlm.rewards.base import RewardResult, empty_cost


def oracle_rewards(dataset: OfflineDataset) -> RewardResult:
    started = time.perf_counter()
    completed = dataset.completed_per_step
    return RewardResult(
        reward_set="oracle",
        rewards=completed.astype(np.float32),
        provenance={"method": "oracle", "source": "privileged ground-truth sub-task progress", "lvlm": None},
        cost=empty_cost(time.perf_counter() - started),
    )
