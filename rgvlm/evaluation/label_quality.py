"""How well a reward set agrees with the privileged ground truth (a diagnostic, never a learner input).

- ``spearman_progress``: rank correlation between the reward and the sub-tasks the step
  completed (0, 1, ...): does the reward rank completing steps above the others?
- ``auroc_completion``: the probability that a random step that completed a sub-task gets a
  higher reward than a random step that did not (ties count half).

None of the seed papers measures this; it is how a user judges an LVLM's labels before
paying to train on them.
"""

from __future__ import annotations

import numpy as np

from rgvlm.data.storage import OfflineDataset


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (NaN when either side is constant)."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (Mann-Whitney U)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def label_quality(dataset: OfflineDataset, rewards: np.ndarray) -> dict[str, float]:
    """Agreement of one reward set with the dataset's ground-truth progress."""
    completed = dataset.completed_per_step
    return {
        "spearman_progress": spearman(rewards, completed),
        "auroc_completion": auroc(rewards, completed > 0),
        "completing_steps": int((completed > 0).sum()),
        "transitions": int(completed.size),
    }
