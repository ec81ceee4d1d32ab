"""One IQL run trained eagerly, one update at a time: the reference the tests check the
pipeline's stacked trainer (:class:`rgvlm.rl.multirun.MultiRunIQL`) and the IQL mathematics
against. The pipeline does not use it.

* :func:`make_uniform_sampler`: batches drawn uniformly from tensors of transitions;
* :func:`train`: the update loop with logging and exact-resume checkpoints;
* :func:`save_checkpoint` / :func:`load_checkpoint`: one learner's whole state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import torch

from rgvlm.rl.iql import BATCH_FIELDS, IQLLearner, TransitionBatch, save_state_atomic

Sampler = Callable[[torch.Generator], TransitionBatch]


def make_uniform_sampler(
    tensors: Mapping[str, torch.Tensor],
    batch_size: int,
    mission_table: torch.Tensor | None = None,
) -> Sampler:
    """Sampler drawing ``batch_size`` transitions uniformly with replacement.

    ``tensors`` maps every :class:`TransitionBatch` field name to a tensor whose first dim
    indexes transitions (extra keys are ignored). All tensors should live on the learner's
    device; indices are drawn on the generator's device and moved to the data's device.

    ``mission_table`` (optional, ``[M, S, E]``): when given, ``tensors["mission"]`` holds int64
    indices into it instead of per-transition embeddings -- saves ``S*E`` floats per transition
    when many transitions share a handful of missions.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size = {batch_size!r} is invalid: must be an int > 0")
    missing = [name for name in BATCH_FIELDS if name not in tensors]
    if missing:
        raise KeyError(f"dataset tensors lack the TransitionBatch fields {missing}")
    data = {name: tensors[name] for name in BATCH_FIELDS}
    sizes = {name: int(t.shape[0]) for name, t in data.items()}
    n = sizes["action"]
    if n == 0 or any(size != n for size in sizes.values()):
        raise ValueError(f"dataset tensors must share a non-zero first dimension, got {sizes}")
    if mission_table is not None and data["mission"].dtype != torch.int64:
        raise ValueError("with a mission_table, tensors['mission'] must hold int64 indices")
    data_device = data["action"].device

    def sample(generator: torch.Generator) -> TransitionBatch:
        idx = torch.randint(n, (batch_size,), generator=generator, device=generator.device)
        idx = idx.to(data_device)
        fields = {name: t[idx] for name, t in data.items()}
        if mission_table is not None:
            fields["mission"] = mission_table[fields["mission"]]
        return TransitionBatch(**fields)

    return sample


def save_checkpoint(learner: IQLLearner, path: str | os.PathLike[str]) -> None:
    """Write ``learner.state_dict()`` atomically (see :func:`save_state_atomic`)."""
    save_state_atomic(learner.state_dict(), path)


def load_checkpoint(learner: IQLLearner, path: str | os.PathLike[str]) -> None:
    """Load a checkpoint written by :func:`save_checkpoint` into ``learner``."""
    state = torch.load(os.fspath(path), map_location=learner.device, weights_only=True)
    learner.load_state_dict(state)


LogFn = Callable[[int, dict[str, float], float], None]


def train(
    learner: IQLLearner,
    sampler: Sampler,
    num_steps: int | None = None,
    log_every: int | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    on_log: LogFn | None = None,
) -> dict[str, float]:
    """Run updates until ``learner.step == num_steps`` (a total, not an increment).

    * If ``checkpoint_path`` exists, the learner is first restored from it (weights, optimisers,
      target, step and the sampling generator), so a resumed run equals an uninterrupted one
      bit for bit on CPU.
    * Each step draws ``sampler(learner.generator)`` and calls ``learner.update``.
    * Every ``log_every`` steps, ``on_log(step, metrics_as_floats, updates_per_second)`` is
      called; this is the only host sync of the loop (skipped entirely if ``on_log`` is None).
    * Every ``checkpoint_every`` steps and at the end a checkpoint is written atomically.

    ``None`` for num_steps / log_every / checkpoint_every means "take it from the config";
    0 disables logging / periodic checkpoints. Returns the last metrics as floats ({} if no
    update was run).
    """
    cfg = learner.config
    num_steps = cfg.num_steps if num_steps is None else num_steps
    log_every = cfg.log_every if log_every is None else log_every
    checkpoint_every = cfg.checkpoint_every if checkpoint_every is None else checkpoint_every
    for name, value in (("num_steps", num_steps), ("log_every", log_every), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} = {value!r} is invalid: must be an int >= 0")

    last_saved = -1  # step of the checkpoint on disk, to avoid rewriting an identical one
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        load_checkpoint(learner, checkpoint_path)
        last_saved = learner.step

    metrics: dict[str, torch.Tensor] = {}
    tick, tick_step = time.perf_counter(), learner.step
    while learner.step < num_steps:
        metrics = learner.update(sampler(learner.generator))
        step = learner.step
        if on_log is not None and log_every and step % log_every == 0:
            # One stacked transfer instead of one sync per metric.
            values = torch.stack(list(metrics.values())).tolist()
            now = time.perf_counter()  # after the sync, so the rate covers finished work
            rate = (step - tick_step) / max(now - tick, 1e-9)
            on_log(step, dict(zip(metrics.keys(), values, strict=True)), rate)
            tick, tick_step = time.perf_counter(), step
        if checkpoint_path is not None and checkpoint_every and step % checkpoint_every == 0:
            save_checkpoint(learner, checkpoint_path)
            last_saved = step
    if checkpoint_path is not None and last_saved != learner.step:
        save_checkpoint(learner, checkpoint_path)
    if not metrics:
        return {}
    return dict(zip(metrics.keys(), torch.stack(list(metrics.values())).tolist(), strict=True))
