"""Reward methods: each maps the offline dataset to one reward per transition.

``REWARD_METHODS`` is the registry the rewards stage reads ``rewards.methods`` against.
"""

from __future__ import annotations

from collections.abc import Callable

from rgvlm.data.storage import OfflineDataset
from rgvlm.rewards.base import RewardResult, load_rewards, save_rewards
from rgvlm.rewards.fusion import fuse, fused_name
from rgvlm.rewards.oracle import oracle_rewards
from rgvlm.rewards.sparse import sparse_rewards


def rg_vlm_rewards(dataset: OfflineDataset) -> RewardResult:
    """The RG-VLM reward set written by the labelling stage (LVLM queries live there)."""
    from rgvlm import paths

    result = load_rewards(paths.LABELS, "rg_vlm")
    if result.rewards.shape != (dataset.num_transitions,):
        raise ValueError(f"outputs/labels/rg_vlm.npy labels {result.rewards.shape[0]} transitions, "
                         f"the dataset has {dataset.num_transitions}: rerun the labelling stage")
    return result


REWARD_METHODS: dict[str, Callable[[OfflineDataset], RewardResult]] = {
    "sparse": sparse_rewards,
    "oracle": oracle_rewards,
    "rg_vlm": rg_vlm_rewards,
}

__all__ = [
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
