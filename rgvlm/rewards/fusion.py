"""Fusing the sparse task reward with a dense one: r = sparse + lambda * dense."""

from __future__ import annotations

import math

from rgvlm.rewards.base import RewardResult


def fused_name(dense_method: str, lam: float) -> str:
    """The reward set's name, e.g. ``sparse+rg_vlm@0.5``."""
    return f"sparse+{dense_method}@{lam:g}"


def fuse(sparse: RewardResult, dense: RewardResult, lam: float) -> RewardResult:
    """``sparse + lam * dense``, transition by transition."""
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"fusion lambda={lam!r}: expected a finite number >= 0")
    if sparse.rewards.shape != dense.rewards.shape:
        raise ValueError(
            f"cannot fuse {sparse.reward_set!r} {sparse.rewards.shape} with {dense.reward_set!r} {dense.rewards.shape}: "
            "they label different datasets"
        )
    return RewardResult(
        reward_set=fused_name(dense.reward_set, lam),
        rewards=sparse.rewards + lam * dense.rewards,
        provenance={"method": "fusion", "sparse": sparse.provenance, "dense": dense.provenance, "lambda": lam,
                    "lvlm": dense.provenance.get("lvlm")},
        # The fusion itself costs nothing: the dense method's cost is reported once, under its own name.
        cost={**dense.cost, "note": f"cost of {dense.reward_set}, shared"},
    )
