"""Aggregating evaluation episodes: mean over training seeds with a bootstrap 95% interval.

The interval is a two-level (hierarchical) percentile bootstrap: each resample draws the
training seeds with replacement, then each drawn seed's episodes with replacement, so it
covers both sources of noise — which seed trained the policy, and which start states it was
evaluated on. With only a handful of seeds, resampling seeds alone would call a 50-episode
mean exact.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("completion", "success")


def bootstrap_interval(values: np.ndarray, samples: int, rng: np.random.Generator, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``: ``[seeds]`` (one value per seed)
    or ``[seeds, episodes]`` (two-level: seeds, then each seed's episodes, with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    num_seeds, num_episodes = values.shape
    if values.size == 1:
        return float(values[0, 0]), float(values[0, 0])
    seeds = rng.integers(num_seeds, size=(samples, num_seeds))
    if num_episodes == 1:
        means = values[seeds, 0].mean(axis=1)
    else:
        episodes = rng.integers(num_episodes, size=(samples, num_seeds, num_episodes))
        means = values[seeds[..., None], episodes].mean(axis=(1, 2))
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def summarize(episodes: pd.DataFrame, samples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (policy,) reward set, split, k: mean over seeds of each seed's mean, the two-level
    bootstrap interval, and counts. ``episodes`` needs columns reward_set, run_seed, split, k and
    :data:`METRICS`; a ``policy`` column (greedy, sampled, ...) adds a level."""
    rng = np.random.default_rng(seed)
    keys = (["policy"] if "policy" in episodes else []) + ["reward_set", "split", "k"]
    rows = []
    for key, group in episodes.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True)) | {"k": int(key[-1])}
        per_seed = [g for _, g in group.groupby("run_seed", sort=True)]
        row.update({"num_seeds": len(per_seed), "num_episodes": len(group)})
        for metric in METRICS:
            seed_means = np.array([g[metric].mean() for g in per_seed], dtype=np.float64)
            sizes = {len(g) for g in per_seed}
            # Same episodes for every seed (the pipeline's case): two levels; otherwise seeds only.
            values = np.stack([g[metric].to_numpy(np.float64) for g in per_seed]) if len(sizes) == 1 else seed_means
            low, high = bootstrap_interval(values, samples, rng)
            row.update({f"{metric}_mean": float(seed_means.mean()), f"{metric}_low": low, f"{metric}_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_overall(episodes: pd.DataFrame, samples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (policy,) reward set, split, pooled over every k: the generalisation table (seen vs fresh)."""
    pooled = episodes.assign(k=0)
    return summarize(pooled, samples, seed).drop(columns="k")
