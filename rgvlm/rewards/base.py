"""The one interface every reward method follows, and where its results are stored.

A reward method takes the offline dataset and returns one reward per transition plus a
record of what it cost (LVLM calls, tokens, cache hits, wall time) and where the reward
came from (method, backend, model, parameters): the provenance every report shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rgvlm.data.storage import write_json_atomic, write_npy_atomic


@dataclass
class RewardResult:
    """Rewards for every transition of a dataset, with cost and provenance."""

    method: str
    rewards: np.ndarray  # float32 [N]
    provenance: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rewards = np.asarray(self.rewards, dtype=np.float32)
        if self.rewards.ndim != 1:
            raise ValueError(f"reward method {self.method!r}: rewards must be 1-D, got shape {self.rewards.shape}")
        if not np.all(np.isfinite(self.rewards)):
            raise ValueError(f"reward method {self.method!r}: rewards contain NaN or infinity")


def empty_cost(wall_time_s: float = 0.0) -> dict[str, Any]:
    """The cost record of a method that asks no LVLM."""
    return {
        "lvlm_calls": 0,
        "cache_hits": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "wall_time_s": round(float(wall_time_s), 3),
        "estimated_cost_usd": 0.0,
    }


def save_rewards(directory: Path, result: RewardResult) -> None:
    """Write ``<method>.npy`` and ``<method>.json`` (provenance and cost) atomically."""
    write_npy_atomic(directory / f"{result.method}.npy", result.rewards)
    write_json_atomic(
        directory / f"{result.method}.json",
        {"method": result.method, "provenance": result.provenance, "cost": result.cost,
         "num_transitions": int(result.rewards.shape[0]),
         "mean": float(result.rewards.mean()) if result.rewards.size else 0.0},
    )


def load_rewards(directory: Path, method: str) -> RewardResult:
    """Read a reward set written by :func:`save_rewards`."""
    npy, meta = directory / f"{method}.npy", directory / f"{method}.json"
    if not npy.exists() or not meta.exists():
        raise FileNotFoundError(f"reward set {method!r} not found in {directory}: run the rewards stage first")
    info = json.loads(meta.read_text())
    return RewardResult(method=method, rewards=np.load(npy), provenance=info["provenance"], cost=info["cost"])
