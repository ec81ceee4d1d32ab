"""The learned reward model r(s, a) of ERL-VLM and RL-VLM-F, its two objectives, and relabelling.

Network. :class:`RewardNetwork` reuses the IQL learner's :class:`~rgvlm.rl.networks.StateEncoder`
(symbolic grid + carried object + clause-slot mission embeddings) and puts an action head on it:
an MLP to one value per action, the taken action's value through ``tanh``. The ``tanh`` bounds
every per-step reward to (-1, 1), as in the reward models of the preference-learning code the
two methods build on, so a segment's return can never run away.

Ensemble. :class:`RewardEnsemble` holds ``size`` such networks as *stacked* parameters and
evaluates them together with ``torch.func.vmap``. The inputs are shared, so the expensive part
of the CPU encoder (the one-hot grid, one 9,000-wide row per transition) is built once for the
whole ensemble. Members differ by their initialisation and see the same minibatches.

Objectives (pure functions, checked by hand in the tests).

- Ratings (ERL-VLM, after RbRL): a segment's predicted return ``R = sum_t r(s_t, a_t)`` is
  min-max normalised to [0, 1] within the batch (:func:`minmax_normalise`); the class bounds
  ``0 = b_0 <= b_1 <= ... <= b_n = 1`` are set so the batch's sorted returns fall into the
  classes in the proportions of its labels (:func:`class_bounds`); the probability of class k is
  a softmax over ``-D_k / temperature`` with ``D_k = (R - b_k)(R - b_{k+1})``, negative inside
  the interval and growing quadratically with the distance outside it
  (:func:`rating_probabilities`). The loss is the mean absolute error between the one-hot label
  and these probabilities, robust to noisy labels, with per-class weights inverse to the class
  frequency in the batch; ``loss="ce"`` is the cross-entropy ablation (RbRL's original).
  Minibatches are stratified, minority classes first (:func:`stratified_batch`).
- Preferences (RL-VLM-F): Bradley-Terry, ``P(segment 1 > segment 0) = sigmoid(R_1 - R_0)``,
  trained with cross-entropy (:func:`bradley_terry_loss`).

Normalisation: the ONE place where a model's raw output becomes the reward the offline learner
sees is :meth:`RewardEnsemble.normalise` (min-max of the ensemble mean over the whole dataset,
fitted once by :func:`relabel` and stored in the model, so a saved model gives the same rewards).
A [0, 1] range matches the other dense rewards (RG-VLM's score / 10, the oracle's 0/1), so the
fusion ``sparse + lambda * dense`` means the same for every method.

Everything is seeded and deterministic on the CPU: initialisation under ``torch.random.fork_rng``
(the global RNG is left untouched) and minibatches from a NumPy generator.

Threads: training and relabelling run with ``num_threads`` torch intra-op threads (default 1,
:func:`torch_threads`). The networks are small, so most ops take microseconds, and on a busy
machine (two cores shared with other jobs) every multi-threaded op waits for a descheduled
OpenMP worker: measured 4x slower with 2 threads than with 1 on such a machine, with identical
results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rgvlm.data.storage import OfflineDataset
from rgvlm.envs import NUM_ACTIONS
from rgvlm.rl.iql import save_state_atomic
from rgvlm.rl.networks import EncoderSpec, StateEncoder, mlp

LOSSES = ("mae", "ce")


# -- configuration ----------------------------------------------------------------------
@dataclass(frozen=True)
class RewardModelConfig:
    """Size and training of a reward model (shared by both methods).

    The defaults keep a CPU run on the full dataset (~1,000 labelled segments, ~104k transitions
    to relabel) well under two minutes: one-hot egocentric grid encoder without convolutions, as
    the CPU IQL profile, and 64-wide features.
    """

    feature_dim: int = 64  # output of the grid, mission and joint state encoders
    hidden_dim: int = 64  # width of the action head's hidden layers
    num_layers: int = 2  # hidden layers of the action head
    egocentric: bool = True  # re-express the grid around the agent before encoding it
    ensemble_size: int = 1
    train_steps: int = 200  # gradient steps (each over batch_size segments or pairs)
    batch_size: int = 32  # segments (ratings) or pairs (preferences) per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    relabel_batch_size: int = 4096  # transitions per forward pass when relabelling
    num_threads: int = 1  # torch intra-op threads while training and relabelling; 0 = leave as is


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """Run the block with ``num_threads`` torch intra-op threads (0: unchanged), then restore."""
    previous = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def encoder_spec(dataset: OfflineDataset, mission_table: torch.Tensor, config: RewardModelConfig) -> EncoderSpec:
    """The encoder sizes: grid shape from the dataset, mission slots from the table."""
    height, width = (int(v) for v in dataset.obs_grid.shape[1:3])
    return EncoderSpec(
        height=height, width=width, mission_slots=int(mission_table.shape[1]),
        mission_embed_dim=int(mission_table.shape[2]), conv_channels=0, obs_dim=config.feature_dim,
        slot_dim=16, mission_dim=config.feature_dim, out_dim=config.feature_dim, egocentric=config.egocentric,
    )


# -- networks ---------------------------------------------------------------------------
class RewardNetwork(nn.Module):
    """r(s, a) in (-1, 1): StateEncoder -> MLP -> one value per action -> taken action -> tanh."""

    def __init__(self, spec: EncoderSpec, hidden_dim: int = 64, num_layers: int = 2,
                 num_actions: int = NUM_ACTIONS) -> None:
        super().__init__()
        self.encoder = StateEncoder(spec)
        self.head = mlp(spec.out_dim, hidden_dim, num_layers, num_actions)

    def forward(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor,
                action: torch.Tensor) -> torch.Tensor:
        values = self.head(self.encoder(grid, carry, mission))  # [B, num_actions]
        return torch.tanh(values.gather(-1, action.long().unsqueeze(-1)).squeeze(-1))


class RewardEnsemble(nn.Module):
    """``size`` :class:`RewardNetwork` s as stacked parameters, evaluated with ``vmap``.

    ``forward`` returns every member's reward, ``[size, B]``; :meth:`reward` the normalised
    ensemble mean, the reward the dataset is relabelled with.
    """

    def __init__(self, spec: EncoderSpec, hidden_dim: int = 64, num_layers: int = 2, size: int = 1,
                 num_actions: int = NUM_ACTIONS, seed: int = 0) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"ensemble size={size}: expected >= 1")
        self.spec, self.hidden_dim, self.num_layers, self.size, self.num_actions = (
            spec, hidden_dim, num_layers, size, num_actions)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            members = [RewardNetwork(spec, hidden_dim, num_layers, num_actions) for _ in range(size)]
        self._names = [name for name, _ in members[0].named_parameters()]
        self.stacked = nn.ParameterDict({
            name.replace(".", "__"): nn.Parameter(torch.stack([dict(m.named_parameters())[name].detach()
                                                               for m in members]))
            for name in self._names
        })
        # The template runs each member through functional_call: its constant buffers (the
        # egocentric index table, one-hot offsets) are used, its own parameters never are. It is
        # kept out of the module tree so the state dict holds the stacked parameters only.
        self._template = [members[0].requires_grad_(False)]
        # Min-max of the raw ensemble mean over the relabelled dataset (see normalise()).
        self.register_buffer("reward_low", torch.tensor(0.0))
        self.register_buffer("reward_high", torch.tensor(1.0))

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        self._template[0]._apply(fn, recurse)  # keep the template's buffers on the same device
        return self

    def forward(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor,
                action: torch.Tensor) -> torch.Tensor:
        params = {name: self.stacked[name.replace(".", "__")] for name in self._names}
        template = self._template[0]

        def member(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.func.functional_call(template, p, (grid, carry, mission, action))

        return torch.func.vmap(member)(params)  # [size, B]

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """THE reward normalisation: ``(raw - low) / (high - low)``, with low and high the min and
        max of the raw ensemble mean over the relabelled dataset, so relabelled rewards span [0, 1]."""
        return (raw - self.reward_low) / (self.reward_high - self.reward_low).clamp_min(1e-8)

    def reward(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor,
               action: torch.Tensor) -> torch.Tensor:
        """The normalised ensemble-mean reward ``[B]``."""
        return self.normalise(self(grid, carry, mission, action).mean(0))

    def metadata(self) -> dict[str, Any]:
        """What :func:`load_reward_model` needs to rebuild the ensemble."""
        return {"spec": dataclasses.asdict(self.spec), "hidden_dim": self.hidden_dim, "num_layers": self.num_layers,
                "size": self.size, "num_actions": self.num_actions}


def save_reward_model(path: str | os.PathLike[str], model: RewardEnsemble, extra: dict[str, Any] | None = None) -> None:
    """Write the model (state dict + what rebuilds it + ``extra``) atomically (temp file, fsync,
    ``os.replace``: a crash never leaves a truncated file at ``path``)."""
    save_state_atomic({"state_dict": model.state_dict(), **model.metadata(), "extra": extra or {}}, path)


def load_reward_model(path: str | os.PathLike[str]) -> tuple[RewardEnsemble, dict[str, Any]]:
    """The ensemble saved by :func:`save_reward_model`, and its ``extra`` record."""
    record = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    model = RewardEnsemble(EncoderSpec(**record["spec"]), record["hidden_dim"], record["num_layers"],
                           record["size"], record["num_actions"])
    model.load_state_dict(record["state_dict"])
    return model, record["extra"]


# -- inputs -----------------------------------------------------------------------------
def embed_missions(dataset: OfflineDataset) -> torch.Tensor:
    """The mission table of ``dataset.missions`` (``[M, slots, 384]``) with the bundled sentence
    encoder, as the IQL stage builds it."""
    from rgvlm.rewards.base import exact_threads
    from rgvlm.rl.missions import MissionEmbedder

    with exact_threads():  # the same bits whatever the caller's thread count
        return torch.as_tensor(MissionEmbedder(device="cpu").embed(dataset.missions))


def reward_model_record(model: RewardEnsemble) -> dict[str, Any]:
    """The reward model's part of ERL-VLM's and RL-VLM-F's provenance: what it is and how its
    output is scaled."""
    return {"architecture": "StateEncoder (one-hot grid, clause-slot mission) + action head, tanh",
            **model.metadata(), "normalisation": "ensemble mean, min-max over the dataset to [0, 1]"}


def label_with_reward_model(method: str, label_method: Any, dataset: OfflineDataset, clients: tuple[Any, Any],
                            config: Any, out_dir: Path, failure_policy: Any) -> tuple[Any, dict[str, Any]]:
    """The labelling stage's entry of ERL-VLM and RL-VLM-F (:mod:`rgvlm.rewards.registry`):
    ``label_method`` (``label_erl_vlm`` or ``label_rl_vlm_f``) trains a reward model on the
    LVLM's answers and relabels every transition; the model goes to ``out_dir/reward_model.pt``."""
    from rgvlm.rl.missions import ENCODER_NAME

    stage1, stage2 = clients
    result, stats, model = label_method(dataset, stage1, stage2, config, needs_images=stage1.backend != "scripted",
                                        mission_table=embed_missions(dataset), failure_policy=failure_policy)
    save_reward_model(out_dir / "reward_model.pt", model,
                      {"method": method, "mission_encoder": ENCODER_NAME, "config": result.provenance["config"]})
    return result, stats


class TransitionInputs:
    """Model inputs (grid, carry, mission, action) of any transitions of the dataset."""

    def __init__(self, dataset: OfflineDataset, mission_table: torch.Tensor | np.ndarray, device: str = "cpu"):
        self.dataset, self.device = dataset, device
        self.mission_table = torch.as_tensor(np.asarray(mission_table, dtype=np.float32), device=device)
        if self.mission_table.shape[0] != len(dataset.missions):
            raise ValueError(f"mission table has {self.mission_table.shape[0]} rows, the dataset "
                             f"{len(dataset.missions)} missions (embed dataset.missions)")

    def __call__(self, steps: np.ndarray) -> tuple[torch.Tensor, ...]:
        d = self.dataset
        obs = d.obs_index[steps]
        as_tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=self.device)  # noqa: E731
        return (as_tensor(d.obs_grid[obs]), as_tensor(d.obs_carry[obs]),
                self.mission_table[as_tensor(d.mission_of_step[steps])], as_tensor(d.actions[steps].astype(np.int64)))


def segment_returns(model: RewardEnsemble, inputs: TransitionInputs, steps: np.ndarray,
                    mask: np.ndarray) -> torch.Tensor:
    """Every member's predicted return of each segment, ``[size, Q]`` (sum of r over its real steps)."""
    rewards = model(*inputs(steps.reshape(-1))).reshape(model.size, *steps.shape)
    return (rewards * torch.as_tensor(mask, dtype=rewards.dtype, device=rewards.device)).sum(-1)


# -- the rating objective (ERL-VLM) -----------------------------------------------------
def minmax_normalise(returns: torch.Tensor) -> torch.Tensor:
    """Returns ``[..., B]`` scaled to [0, 1] within the batch (last dimension)."""
    low = returns.min(-1, keepdim=True).values
    high = returns.max(-1, keepdim=True).values
    return (returns - low) / (high - low).clamp_min(1e-8)


def class_bounds(normalised: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class interval bounds ``[n + 1]`` (0 first, 1 last) from one batch: with ``c_k`` the number of
    labels below class k, ``b_k`` lies midway between the ``c_k``-th and ``c_k + 1``-th smallest
    normalised return, so the batch's returns split into the classes in its label proportions.
    An absent class gets an empty interval. Bounds carry no gradient: the returns move, the
    bounds are read off them."""
    ordered = torch.sort(normalised.detach()).values
    counts = torch.bincount(labels, minlength=num_classes)
    below = torch.cumsum(counts, 0)[:-1]  # labels in classes 0..k-1, for k = 1..n-1
    size = ordered.numel()
    inner = []
    for c in below.tolist():
        if c <= 0:
            inner.append(ordered.new_tensor(0.0))
        elif c >= size:
            inner.append(ordered.new_tensor(1.0))
        else:
            inner.append((ordered[c - 1] + ordered[c]) / 2)
    return torch.stack([ordered.new_tensor(0.0), *inner, ordered.new_tensor(1.0)])


def rating_probabilities(normalised: torch.Tensor, bounds: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[B, n]``: softmax over classes of ``-(R - b_k)(R - b_{k+1}) / temperature``."""
    distance = (normalised.unsqueeze(-1) - bounds[:-1]) * (normalised.unsqueeze(-1) - bounds[1:])
    return torch.softmax(-distance / temperature, dim=-1)


def batch_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class weights ``[n]`` inverse to the class frequency in the batch, averaging 1 over the
    batch's samples (``B / (present classes * count_k)``; 0 for an absent class)."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float32)
    present = (counts > 0).sum()
    return torch.where(counts > 0, labels.numel() / (present * counts.clamp_min(1)), torch.zeros_like(counts))


def rating_loss(probabilities: torch.Tensor, labels: torch.Tensor, loss: str = "mae",
                class_weighted: bool = True) -> torch.Tensor:
    """Weighted mean over the batch of ``sum_k |onehot_k - p_k|`` (``mae``) or ``-log p_label``
    (``ce``); weights from :func:`batch_class_weights`, or all 1."""
    num_classes = probabilities.shape[-1]
    if loss == "mae":
        per_sample = (F.one_hot(labels, num_classes).to(probabilities.dtype) - probabilities).abs().sum(-1)
    elif loss == "ce":
        per_sample = -torch.log(probabilities.gather(-1, labels.unsqueeze(-1)).squeeze(-1).clamp_min(1e-12))
    else:
        raise ValueError(f"loss={loss!r}: expected one of {', '.join(LOSSES)}")
    weights = batch_class_weights(labels, num_classes)[labels] if class_weighted else torch.ones_like(per_sample)
    return (weights * per_sample).sum() / weights.sum()


def stratified_batch(labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a batch drawn class by class, minority classes first: each class in turn (rarest
    first) gets an equal share of what is left of the batch, or all its samples if it has fewer;
    the most frequent class takes the rest. No index repeats within a batch."""
    classes, counts = np.unique(labels, return_counts=True)
    order = classes[np.lexsort((classes, counts))]  # rarest first, ties by class id
    remaining = min(batch_size, labels.size)
    chosen = []
    for i, cls in enumerate(order):
        members = np.flatnonzero(labels == cls)
        take = min(remaining // (len(order) - i), members.size)
        chosen.append(rng.choice(members, size=take, replace=False))
        remaining -= take
    return rng.permutation(np.concatenate(chosen))


@dataclass(frozen=True)
class RatingObjective:
    """The knobs of the rating objective (see the module docstring)."""

    num_classes: int = 3
    temperature: float = 0.05
    loss: str = "mae"
    stratified: bool = True
    class_weighted: bool = True


def rating_batch_loss(returns: torch.Tensor, labels: torch.Tensor, objective: RatingObjective) -> torch.Tensor:
    """The rating loss of one batch for every member (``returns`` ``[size, B]``), averaged over members."""
    losses = []
    for member_returns in returns:
        normalised = minmax_normalise(member_returns)
        bounds = class_bounds(normalised, labels, objective.num_classes)
        probabilities = rating_probabilities(normalised, bounds, objective.temperature)
        losses.append(rating_loss(probabilities, labels, objective.loss, objective.class_weighted))
    return torch.stack(losses).mean()


def rating_accuracy(returns: torch.Tensor, labels: torch.Tensor, objective: RatingObjective) -> float:
    """Fraction of segments whose most probable class (ensemble-mean returns, bounds from all
    labels) is their label."""
    normalised = minmax_normalise(returns.mean(0))
    bounds = class_bounds(normalised, labels, objective.num_classes)
    predicted = rating_probabilities(normalised, bounds, objective.temperature).argmax(-1)
    return float((predicted == labels).to(torch.float32).mean())


# -- the preference objective (RL-VLM-F) ------------------------------------------------
def bradley_terry_loss(returns0: torch.Tensor, returns1: torch.Tensor, preferences: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of Bradley-Terry ``P(1 preferred) = sigmoid(R_1 - R_0)`` against ``preferences``
    (1: segment 1 is better, 0: segment 0), mean over pairs (and members, if batched)."""
    return F.binary_cross_entropy_with_logits(returns1 - returns0, preferences.to(returns0.dtype).expand_as(returns0))


# -- training ---------------------------------------------------------------------------
def _optimiser(model: RewardEnsemble, config: RewardModelConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def train_rating_model(dataset: OfflineDataset, mission_table: torch.Tensor, steps: np.ndarray, mask: np.ndarray,
                       labels: np.ndarray, config: RewardModelConfig,
                       objective: RatingObjective) -> tuple[RewardEnsemble, dict[str, Any]]:
    """Fit a reward ensemble to segment ratings (``steps``/``mask`` ``[Q, L]``, ``labels`` ``[Q]``).

    Returns the model and its training record: the final loss and accuracy on all labelled
    segments, the loss of the last step, and the training time."""
    started = time.perf_counter()
    inputs = TransitionInputs(dataset, mission_table)
    model = RewardEnsemble(encoder_spec(dataset, inputs.mission_table, config), config.hidden_dim,
                           config.num_layers, config.ensemble_size, seed=config.seed)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return model, {"steps": 0, "final_loss": None, "train_accuracy": None, "train_time_s": 0.0}
    optimiser = _optimiser(model, config)
    rng = np.random.default_rng([config.seed, 0x7A1])
    last = float("nan")
    for _ in range(config.train_steps):
        if objective.stratified:
            batch = stratified_batch(labels, config.batch_size, rng)
        else:
            batch = rng.choice(labels.size, size=min(config.batch_size, labels.size), replace=False)
        returns = segment_returns(model, inputs, steps[batch], mask[batch])
        loss = rating_batch_loss(returns, torch.as_tensor(labels[batch]), objective)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        last = float(loss.detach())
    with torch.no_grad():
        returns = torch.cat([segment_returns(model, inputs, steps[i : i + 512], mask[i : i + 512])
                             for i in range(0, labels.size, 512)], dim=1)
        all_labels = torch.as_tensor(labels)
        final = float(rating_batch_loss(returns, all_labels, objective))
        accuracy = rating_accuracy(returns, all_labels, objective)
    return model, {"steps": config.train_steps, "final_loss": round(final, 6), "last_step_loss": round(last, 6),
                   "train_accuracy": round(accuracy, 4), "train_time_s": round(time.perf_counter() - started, 3)}


def train_preference_model(dataset: OfflineDataset, mission_table: torch.Tensor, steps0: np.ndarray,
                           mask0: np.ndarray, steps1: np.ndarray, mask1: np.ndarray, preferences: np.ndarray,
                           config: RewardModelConfig) -> tuple[RewardEnsemble, dict[str, Any]]:
    """Fit a Bradley-Terry reward ensemble to pairwise preferences (1: segment 1 better).

    Returns the model and its record: final loss and accuracy (ensemble-mean returns order the
    pair as labelled) on all pairs, the loss of the last step, and the training time."""
    started = time.perf_counter()
    inputs = TransitionInputs(dataset, mission_table)
    model = RewardEnsemble(encoder_spec(dataset, inputs.mission_table, config), config.hidden_dim,
                           config.num_layers, config.ensemble_size, seed=config.seed)
    preferences = np.asarray(preferences, dtype=np.float32)
    if preferences.size == 0:
        return model, {"steps": 0, "final_loss": None, "train_accuracy": None, "train_time_s": 0.0}
    optimiser = _optimiser(model, config)
    rng = np.random.default_rng([config.seed, 0xB7])
    last = float("nan")
    for _ in range(config.train_steps):
        batch = rng.choice(preferences.size, size=min(config.batch_size, preferences.size), replace=False)
        # Both segments of every pair in one forward pass.
        returns = segment_returns(model, inputs, np.concatenate([steps0[batch], steps1[batch]]),
                                  np.concatenate([mask0[batch], mask1[batch]]))
        loss = bradley_terry_loss(returns[:, : batch.size], returns[:, batch.size :],
                                  torch.as_tensor(preferences[batch]))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        last = float(loss.detach())
    with torch.no_grad():
        r0 = torch.cat([segment_returns(model, inputs, steps0[i : i + 256], mask0[i : i + 256])
                        for i in range(0, preferences.size, 256)], dim=1)
        r1 = torch.cat([segment_returns(model, inputs, steps1[i : i + 256], mask1[i : i + 256])
                        for i in range(0, preferences.size, 256)], dim=1)
        target = torch.as_tensor(preferences)
        final = float(bradley_terry_loss(r0, r1, target))
        accuracy = float(((r1.mean(0) > r0.mean(0)).to(torch.float32) == target).to(torch.float32).mean())
    return model, {"steps": config.train_steps, "final_loss": round(final, 6), "last_step_loss": round(last, 6),
                   "train_accuracy": round(accuracy, 4), "train_time_s": round(time.perf_counter() - started, 3)}


# -- relabelling ------------------------------------------------------------------------
def relabel(model: RewardEnsemble, dataset: OfflineDataset, mission_table: torch.Tensor,
            batch_size: int = 4096) -> tuple[np.ndarray, dict[str, float]]:
    """Reward every transition of the dataset with the model: the ensemble mean, normalised by
    :meth:`RewardEnsemble.normalise` after fitting its min and max to this dataset (stored in the
    model). Returns float32 rewards in [0, 1] and the raw statistics."""
    started = time.perf_counter()
    inputs = TransitionInputs(dataset, mission_table)
    raw = np.empty(dataset.num_transitions, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, dataset.num_transitions, batch_size):
            steps = np.arange(start, min(start + batch_size, dataset.num_transitions))
            raw[steps] = model(*inputs(steps)).mean(0).numpy()
        low, high = (float(raw.min()), float(raw.max())) if raw.size else (0.0, 1.0)
        model.reward_low.fill_(low)
        model.reward_high.fill_(high)
        rewards = model.normalise(torch.as_tensor(raw)).numpy().astype(np.float32)
    info = {"raw_min": round(low, 6), "raw_max": round(high, 6), "raw_mean": round(float(raw.mean()), 6) if raw.size else 0.0,
            "relabel_time_s": round(time.perf_counter() - started, 3)}
    return rewards, info


def fit_and_relabel(dataset: OfflineDataset, mission_table: torch.Tensor | np.ndarray, config: RewardModelConfig,
                    num_labels: int, fit: Callable[[torch.Tensor], tuple[RewardEnsemble, dict[str, Any]]],
                    ) -> tuple[RewardEnsemble, np.ndarray, dict[str, Any]]:
    """``fit(mission_table)`` (training on ``num_labels`` answers), then :func:`relabel`, both with
    ``config.num_threads`` torch threads. Returns the model, the rewards and the training and
    relabelling statistics."""
    table = torch.as_tensor(mission_table)
    with torch_threads(config.num_threads):
        model, training = fit(table)
        if num_labels:
            rewards, relabelling = relabel(model, dataset, table, config.relabel_batch_size)
        else:  # nothing to learn from: no information, no reward
            rewards, relabelling = np.zeros(dataset.num_transitions, dtype=np.float32), {}
    return model, rewards, {**training, **relabelling}
