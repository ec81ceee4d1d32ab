"""How good a reward set's labels are (a diagnostic, never a learner input).

Against the privileged ground truth (sub-task completions), which only a benchmark has:

- ``spearman_progress``: rank correlation between the reward and the sub-tasks the step
  completed (0, 1, ...): does the reward rank completing steps above the others?
- ``auroc_completion``: the probability that a random step that completed a sub-task gets a
  higher reward than a random step that did not (ties count half).

Without ground truth, from trajectories known to succeed (a user has those on their own data):

- ``voc``: Value-Order Correlation (GVL, Ma et al., ICLR 2025): the mean over the dataset's
  expert episodes (``kind == "expert"``; in a dataset without them, its successful episodes) of
  Spearman(t, v_t), the rank correlation of a value
  series with the chronological order. GVL defines it for predicted values (progress); for a
  method that outputs a per-state value (GVL's progress, ``RewardResult.values``) v_t is that
  value of the state after step t. For per-transition rewards, the adaptation used here: v_t is
  the running sum over the episode of the reward centred by its median over the whole dataset,
  v_t = sum_{s <= t} (r_s - median(r)). An uninformative reward then gives a random walk (VOC
  near 0), and a reward that pays expert steps above the typical one rises (VOC toward 1). A
  constant series has no order: its VOC is 0 (not NaN); episodes of one step are left out.

None of the seed papers measures the first two; they are how a benchmark judges an LVLM's labels
before paying to train on them. VOC is what a user can compute on their own data.
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


def order_correlation(values: np.ndarray) -> float:
    """Spearman(t, values[t]) of one episode's series; 0 for a constant series (no order)."""
    values = np.asarray(values, dtype=np.float64)
    rho = spearman(np.arange(values.size, dtype=np.float64), values)
    return 0.0 if np.isnan(rho) else rho


def reward_values(dataset: OfflineDataset, rewards: np.ndarray) -> np.ndarray:
    """The value series VOC reads for per-transition rewards: per episode, the running sum of
    the reward centred by its median over the dataset (float64 [N]; module docstring)."""
    centred = np.asarray(rewards, dtype=np.float64) - float(np.median(rewards)) if len(rewards) else np.zeros(0)
    values = np.empty_like(centred)
    for index in range(len(dataset.episodes)):
        steps = dataset.episode_steps(index)
        values[steps] = np.cumsum(centred[steps])
    return values


def expert_episodes(dataset: OfflineDataset) -> list[int]:
    """The episodes known to succeed that VOC averages over: the dataset's ``expert`` episodes; in a
    dataset without that kind (one read from elsewhere, :mod:`rgvlm.relabel`), the episodes that
    ended in success."""
    experts = [i for i, episode in enumerate(dataset.episodes) if episode.get("kind") == "expert"]
    return experts or [i for i, episode in enumerate(dataset.episodes) if episode.get("success")]


def value_order_correlation(dataset: OfflineDataset, rewards: np.ndarray, values: np.ndarray | None = None) -> float:
    """VOC of a reward set on the expert episodes (module docstring): ``values`` (the state
    value after each transition) when the method has them, else :func:`reward_values`. NaN when
    the dataset has no expert episode of two steps or more."""
    series = reward_values(dataset, rewards) if values is None else np.asarray(values, dtype=np.float64)
    correlations = [order_correlation(series[dataset.episode_steps(i)]) for i in expert_episodes(dataset)
                    if dataset.episodes[i]["length"] >= 2]
    return float(np.mean(correlations)) if correlations else float("nan")


def label_quality(dataset: OfflineDataset, rewards: np.ndarray, values: np.ndarray | None = None) -> dict[str, float]:
    """Agreement of one reward set with the dataset's ground-truth progress (AUROC, Spearman),
    and its VOC on the expert episodes (no ground truth; ``values``: see
    :func:`value_order_correlation`)."""
    completed = dataset.completed_per_step
    return {
        "spearman_progress": spearman(rewards, completed),
        "auroc_completion": auroc(rewards, completed > 0),
        "voc": value_order_correlation(dataset, rewards, values),
        "voc_source": "values" if values is not None else "reward running sum",
        "voc_episodes": sum(dataset.episodes[i]["length"] >= 2 for i in expert_episodes(dataset)),
        "completing_steps": int((completed > 0).sum()),
        "transitions": int(completed.size),
    }
