"""Aggregating evaluation episodes: mean over training seeds with a bootstrap 95% interval.

Records that name their layout (a ``seed`` column: the reset seed, as every rollout record
does) are a crossed table of training seeds x layouts, and their interval is the two-level
bootstrap over seeds AND layouts of :mod:`rgvlm.evaluation.paired` (the pipeline's case: every
run meets the same layouts, so layout variation is shared by all seeds and must be resampled
once for all of them, not episode by episode within each seed).

Records without a layout column keep the older two-level bootstrap of :func:`bootstrap_interval`:
each resample draws the training seeds with replacement, then each drawn seed's episodes with
replacement. With only a handful of seeds, resampling seeds alone would call a 50-episode mean
exact.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rgvlm.evaluation.paired import LAYOUT, summarize_cells, with_subtasks

METRICS = ("completion", "success", "subtasks")


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


def _summarize_without_layouts(episodes: pd.DataFrame, samples: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    keys = (["policy"] if "policy" in episodes else []) + ["reward_set", "split", "k"]
    rows = []
    for key, group in episodes.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True)) | {"k": int(key[-1])}
        per_seed = [g for _, g in group.groupby("run_seed", sort=True)]
        row.update({"num_seeds": len(per_seed), "num_episodes": len(group), "interval": "seeds x episodes"})
        for metric in METRICS:
            seed_means = np.array([g[metric].mean() for g in per_seed], dtype=np.float64)
            sizes = {len(g) for g in per_seed}
            # Same number of episodes for every seed: two levels; otherwise seeds only.
            values = np.stack([g[metric].to_numpy(np.float64) for g in per_seed]) if len(sizes) == 1 else seed_means
            low, high = bootstrap_interval(values, samples, rng)
            row.update({f"{metric}_mean": float(seed_means.mean()), f"{metric}_low": low, f"{metric}_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(episodes: pd.DataFrame, samples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (policy,) reward set, split, k: mean over seeds of each seed's mean, its 95% interval,
    and counts, for completion, success and sub-tasks done (``subtasks``: from ``progress``, else
    completion x k). ``episodes`` needs columns reward_set, run_seed, split, k, completion and
    success; a ``policy`` column (greedy, sampled, ...) adds a level; a ``seed`` column (the
    layout) selects the seeds x layouts interval (module docstring). ``interval`` names which."""
    episodes = with_subtasks(episodes.assign(success=episodes["success"].astype(np.float64)))
    if LAYOUT in episodes:
        return summarize_cells(episodes, samples, seed, METRICS)
    return _summarize_without_layouts(episodes, samples, seed)


def summarize_overall(episodes: pd.DataFrame, samples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (policy,) reward set, split, pooled over every k: the generalisation table (seen vs
    fresh). With layouts, a layout's cell is the mean over the k it was evaluated at (the values of
    k share the layout seeds), so a layout is resampled with all its k at once."""
    pooled = with_subtasks(episodes).assign(k=0)
    return summarize(pooled, samples, seed).drop(columns="k")
