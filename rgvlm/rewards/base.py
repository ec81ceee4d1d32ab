"""The one interface every reward method follows, and where its results are stored.

A reward method takes the offline dataset and returns one reward per transition plus a
record of what it cost (LVLM calls, tokens, cache hits, wall time) and where the reward
came from (method, backend, model, parameters): the provenance every report shows.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rgvlm.atomic import write_json_atomic, write_npy_atomic

if TYPE_CHECKING:
    from rgvlm.vlm.base import FailurePolicy


@dataclass
class RewardResult:
    """Rewards for every transition of a dataset, with cost and provenance."""

    reward_set: str  # a reward method alone (``oracle``) or a fusion (``sparse+rg_vlm@1``)
    rewards: np.ndarray  # float32 [N]
    provenance: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    #: A method whose output is a per-state value (GVL's progress) keeps it here, aligned with the
    #: transitions: the value of the state each transition leads to, float32 [N]. Label quality's
    #: VOC reads it instead of the rewards' running sum. None for every other method.
    values: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.rewards = np.asarray(self.rewards, dtype=np.float32)
        if self.rewards.ndim != 1:
            raise ValueError(f"reward set {self.reward_set!r}: rewards must be 1-D, got shape {self.rewards.shape}")
        if not np.all(np.isfinite(self.rewards)):
            raise ValueError(f"reward set {self.reward_set!r}: rewards contain NaN or infinity")
        if self.values is not None:
            self.values = np.asarray(self.values, dtype=np.float32)
            if self.values.shape != self.rewards.shape or not np.all(np.isfinite(self.values)):
                raise ValueError(f"reward set {self.reward_set!r}: values must be finite, one per transition "
                                 f"({self.rewards.shape}), got shape {self.values.shape}")


class LabellingFailed(RuntimeError):
    """A labelling stage ended with more queries unanswered than ``labelling.max_failure_rate`` allows."""


def check_failure_rate(method: str, failed: int, total: int, reasons: Mapping[str, int],
                       policy: FailurePolicy | None, unit: str = "queries") -> None:
    """Raise :class:`LabellingFailed` when ``failed / total`` is above ``policy`` (the one the
    labelling stage hands the method's ``label``; None: no limit, as for a method called on a bare
    backend in a notebook cell).

    ``reasons`` counts every rejected answer by the parser's reason, re-asks included: what a
    user needs to decide whether the prompt, the model or the parser is at fault."""
    if policy is None or total <= 0 or failed / total <= policy.max_failure_rate:
        return
    counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
    raise LabellingFailed(
        f"{method}: {failed} of {total} {unit} ({failed / total:.1%}) got no usable answer after their re-asks, "
        f"more than labelling.max_failure_rate={policy.max_failure_rate} allows. Rejected answers by reason: "
        f"{counts or 'none recorded'}. The raw answers are kept in {policy.raw_answers} (one JSON file each; "
        "'text' is what the model said; files ending in .corrupt could not be read). Look at a few, then fix the "
        "prompt, the model or max_reasks, or raise labelling.max_failure_rate to train on the fallbacks; answers "
        "already paid for are reused by the rerun."
    )


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


# -- exactness (README "Reproducing and verifying") ----------------------------------------
#: Decimals every written reward / label keeps. Float rewards computed through BLAS reductions
#: (sentence-encoder embeddings, reward models) can differ in the last bits across thread counts;
#: the stages that compute them fix their thread count (:func:`exact_threads`), and rounding to a
#: grid of 1e-6 (far below any reward difference that matters to a learner) makes the bytes
#: depend on the value, not on how the float was reached.
REWARD_DECIMALS = 6
#: Threads torch runs the label stages' small models with (sentence encoder, reward models).
EXACT_THREADS = 1


def quantise_rewards(values: Any) -> np.ndarray:
    """The ONE place a reward or label array is rounded before it is written: float32, rounded
    to :data:`REWARD_DECIMALS` decimals (in float64, so the rounding itself is exact)."""
    rounded = np.round(np.asarray(values, dtype=np.float64), REWARD_DECIMALS)
    return (rounded + 0.0).astype(np.float32)  # + 0.0 turns -0.0 into 0.0


@contextlib.contextmanager
def exact_threads(num_threads: int = EXACT_THREADS) -> Iterator[None]:
    """Run the block with ``num_threads`` torch intra-op threads (the outputs it computes are
    then the same whatever OMP_NUM_THREADS or the caller set) and torch's deterministic
    algorithms (``warn_only``: an op without one warns, never fails), restoring both after."""
    import torch

    previous = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


#: Fields of a cost record that depend on how the run went, not on the labels: wall times, and
#: the counters that depend on a warm LVLM cache (a rerun from the cache asks nothing). They stay
#: in the stage's ``reports/metrics/labelling_<method>.json``; the reward files leave them out.
TIMING_KEYS = frozenset({"wall_time_s", "train_time_s", "relabel_time_s", "describe_s", "load_s", "embed_goals_s",
                         "embed_states_s", "score_s", "random_rollout_s"})
CACHE_KEYS = frozenset({"lvlm_calls", "cache_hits", "prompt_tokens", "completion_tokens", "estimated_cost_usd"})
RUN_KEYS = TIMING_KEYS | CACHE_KEYS


def without_run_fields(obj: Any, keys: frozenset[str] = RUN_KEYS) -> Any:
    """``obj`` without the fields ``keys`` (recursively, dicts and lists)."""
    if isinstance(obj, dict):
        return {k: without_run_fields(v, keys) for k, v in obj.items() if str(k) not in keys}
    if isinstance(obj, list):
        return [without_run_fields(v, keys) for v in obj]
    return obj


def save_rewards(directory: Path, result: RewardResult) -> None:
    """Write ``<reward set>.npy`` (quantised by :func:`quantise_rewards`) and ``<reward set>.json``
    (provenance and cost without :data:`RUN_KEYS`) atomically: both byte-exact across runs,
    cold or warm LVLM cache; and ``<method>.values.npy`` (quantised too) for a result with values."""
    rewards = quantise_rewards(result.rewards)
    write_npy_atomic(directory / f"{result.reward_set}.npy", rewards)
    if result.values is not None:
        write_npy_atomic(directory / f"{result.reward_set}.values.npy", quantise_rewards(result.values))
    write_json_atomic(
        directory / f"{result.reward_set}.json",
        {"reward_set": result.reward_set, "provenance": without_run_fields(result.provenance),
         "cost": without_run_fields(result.cost), "num_transitions": int(rewards.shape[0]),
         "mean": round(float(rewards.astype(np.float64).mean()), REWARD_DECIMALS) if rewards.size else 0.0},
    )


def load_rewards(directory: Path, reward_set: str) -> RewardResult:
    """Read a reward set written by :func:`save_rewards`."""
    npy, meta = directory / f"{reward_set}.npy", directory / f"{reward_set}.json"
    if not npy.exists() or not meta.exists():
        raise FileNotFoundError(f"reward set {reward_set!r} not found in {directory}: run the rewards stage first")
    info = json.loads(meta.read_text())
    values = directory / f"{reward_set}.values.npy"
    return RewardResult(reward_set=reward_set, rewards=np.load(npy), provenance=info["provenance"], cost=info["cost"],
                        values=np.load(values) if values.exists() else None)
