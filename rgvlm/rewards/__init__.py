"""Reward methods: each maps the offline dataset to one reward per transition.

``REWARD_METHODS`` is what the rewards stage reads ``rewards.methods`` against: ``sparse``,
``oracle`` and every labelled method of :mod:`rgvlm.rewards.registry`.
"""

from __future__ import annotations

from collections.abc import Callable

from rgvlm.data.storage import OfflineDataset
from rgvlm.rewards.base import RewardResult, load_rewards, save_rewards
from rgvlm.rewards.fusion import fuse, fused_name
from rgvlm.rewards.oracle import oracle_rewards
from rgvlm.rewards.registry import LABELLED_METHODS
from rgvlm.rewards.sparse import sparse_rewards


def labelled_rewards(method: str) -> Callable[[OfflineDataset], RewardResult]:
    """The loader of a reward set written by the method's labelling stage."""

    def load(dataset: OfflineDataset) -> RewardResult:
        from rgvlm import paths

        result = load_rewards(paths.LABELS / method, method)
        if result.rewards.shape != (dataset.num_transitions,):
            raise ValueError(f"outputs/labels/{method}/{method}.npy labels {result.rewards.shape[0]} transitions, "
                             f"the dataset has {dataset.num_transitions}: rerun the label@{method} stage")
        return result

    return load


REWARD_METHODS: dict[str, Callable[[OfflineDataset], RewardResult]] = {
    "sparse": sparse_rewards,
    "oracle": oracle_rewards,
    **{method: labelled_rewards(method) for method in LABELLED_METHODS},
}

__all__ = [
    "LABELLED_METHODS",
    "REWARD_METHODS",
    "compute_reward_sets",
    "RewardResult",
    "fuse",
    "fused_name",
    "load_rewards",
    "oracle_rewards",
    "save_rewards",
    "sparse_rewards",
]


def compute_reward_sets(dataset: OfflineDataset, methods: tuple[str, ...], fusion_dense: tuple[str, ...] = (),
                        fusion_lambdas: tuple[float, ...] = ()) -> list[RewardResult]:
    """Every reward set the rewards stage writes: each method, then each fusion."""
    results = {name: REWARD_METHODS[name](dataset) for name in methods}
    fused = [fuse(results["sparse"], results[dense], lam) for dense in fusion_dense for lam in fusion_lambdas]
    return [*results.values(), *fused]
