"""Aggregating evaluation episodes: mean over training seeds with a bootstrap 95% interval."""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("completion", "success")


def bootstrap_interval(values: np.ndarray, samples: int, rng: np.random.Generator, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per seed)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 1:
        return float(values[0]), float(values[0])
    means = rng.choice(values, size=(samples, values.size), replace=True).mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def summarize(episodes: pd.DataFrame, samples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (method, split, k): mean over seeds of each seed's mean, bootstrap interval over
    seeds, and counts. ``episodes`` needs columns method, run_seed, split, k and
    :data:`METRICS`."""
    rng = np.random.default_rng(seed)
    per_seed = episodes.groupby(["method", "split", "k", "run_seed"], sort=True)[list(METRICS)].mean()
    counts = episodes.groupby(["method", "split", "k"], sort=True).size()
    rows = []
    for (method, split, k), group in per_seed.groupby(level=["method", "split", "k"], sort=True):
        row = {"method": method, "split": split, "k": int(k), "num_seeds": len(group), "num_episodes": int(counts[(method, split, k)])}
        for metric in METRICS:
            values = group[metric].to_numpy()
            low, high = bootstrap_interval(values, samples, rng)
            row.update({f"{metric}_mean": float(values.mean()), f"{metric}_low": low, f"{metric}_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_overall(episodes: pd.DataFrame, samples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (method, split), pooled over every k: the generalisation table (seen vs fresh)."""
    pooled = episodes.assign(k=0)
    return summarize(pooled, samples, seed).drop(columns="k")
