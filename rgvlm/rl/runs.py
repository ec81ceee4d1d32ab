"""Training every (reward set, seed) run of the pipeline at once, resumably.

All runs that still need training form one :class:`~rgvlm.rl.multirun.MultiRunIQL` stack
(stacked parameters, one vmapped update, the dataset resident on the device). While it
trains, the whole stack is checkpointed atomically to ``outputs/models/_stack.pt`` with the
fingerprints of its runs and their training log; when it finishes, every run is exported
to ``outputs/models/<reward set>/seed<seed>.pt`` (the :class:`IQLLearner` format evaluation
loads) beside its fingerprint (IQL config, reward set content, dataset, seed) and its log.

A rerun skips every run whose fingerprint matches and that reached ``num_steps``, resumes
the stack if its runs are exactly the ones left, and otherwise trains the runs left from the
start. A run's result does not depend on which other runs share its stack (see
:func:`rgvlm.rl.multirun.sample_indices`), so adding a reward set trains only the new runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rgvlm.data.storage import OfflineDataset, write_json_atomic
from rgvlm.rl.iql import LOOP_FIELDS, IQLConfig, IQLLearner, save_state_atomic
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL, StackedPolicy, save_multirun


def iql_config_for(dataset: OfflineDataset, hyperparameters: dict) -> IQLConfig:
    """The IQL config with the grid shape taken from the dataset itself."""
    height, width = dataset.obs_grid.shape[1:3]
    return IQLConfig(**{**hyperparameters, "grid_height": int(height), "grid_width": int(width)})


def run_fingerprint(config: IQLConfig, rewards: np.ndarray, dataset: OfflineDataset, seed: int) -> dict:
    """What a run's result depends on; a checkpoint is resumed only if this matches."""
    digest = hashlib.sha256(np.ascontiguousarray(rewards, dtype=np.float32).tobytes()).hexdigest()
    data = hashlib.sha256(json.dumps(dataset.manifest, sort_keys=True).encode()).hexdigest()
    config_dict = asdict(config)
    # How long and how often to log or checkpoint do not change the updates themselves.
    for key in LOOP_FIELDS:
        config_dict.pop(key)
    return {"config": config_dict, "rewards_sha256": digest, "dataset_sha256": data, "seed": seed}


def run_paths(models_dir: Path, reward_set: str, seed: int) -> tuple[Path, Path, Path]:
    """(checkpoint, fingerprint, training log) of one run."""
    base = models_dir / reward_set / f"seed{seed}"
    return base.with_suffix(".pt"), base.with_suffix(".fingerprint.json"), base.with_suffix(".log.json")


STACK_CHECKPOINT = "_stack.pt"


def _finished(models_dir: Path, reward_set: str, seed: int, fingerprint: dict, num_steps: int) -> bool:
    checkpoint, fingerprint_path, log_path = run_paths(models_dir, reward_set, seed)
    if not (checkpoint.exists() and fingerprint_path.exists() and log_path.exists()):
        return False
    if json.loads(fingerprint_path.read_text()) != fingerprint:
        return False
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["step"]) == num_steps


def train_runs(
    dataset: OfflineDataset,
    mission_table: torch.Tensor,
    reward_sets: dict[str, np.ndarray],
    seeds: Sequence[int],
    config: IQLConfig,
    device: str,
    models_dir: Path,
    compile: bool = False,
    cuda_graphs: bool = False,
    on_log: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Train every (reward set, seed) run not already finished, as one stack; returns the log
    rows of all runs (one row per run per ``log_every`` updates)."""
    runs = [(name, seed) for name in reward_sets for seed in seeds]
    fingerprints = {run: run_fingerprint(config, reward_sets[run[0]], dataset, run[1]) for run in runs}
    todo = [run for run in runs if not _finished(models_dir, *run, fingerprints[run], config.num_steps)]
    if todo:
        _train_stack(dataset, mission_table, reward_sets, todo, fingerprints, config, device, models_dir,
                     compile, cuda_graphs, on_log)
    rows: list[dict] = []
    for name, seed in runs:
        rows += json.loads(run_paths(models_dir, name, seed)[2].read_text())
    return rows


def _train_stack(dataset, mission_table, reward_sets, todo, fingerprints, config, device, models_dir,
                 compile, cuda_graphs, on_log) -> None:
    names = list(dict.fromkeys(name for name, _ in todo))
    data = DeviceTransitions(dataset, [reward_sets[name] for name in names], mission_table, device)
    trainer = MultiRunIQL(config, [seed for _, seed in todo], [names.index(name) for name, _ in todo],
                          device=device, compile=compile, cuda_graphs=cuda_graphs)
    stack_path = models_dir / STACK_CHECKPOINT
    identity = [{"reward_set": name, **fingerprints[(name, seed)]} for name, seed in todo]
    log: list[dict] = []
    if stack_path.exists():
        state = torch.load(stack_path, map_location=device, weights_only=True)
        if state["extra"].get("runs") == identity and state["step"] <= config.num_steps:
            trainer.load_state_dict(state)
            log = [row for row in state["extra"]["log"] if row["step"] <= trainer.step]
    tick, tick_step = time.perf_counter(), trainer.step
    while trainer.step < config.num_steps:
        metrics = trainer.update(trainer.sample(data))
        step = trainer.step
        if config.log_every and step % config.log_every == 0:
            values = torch.stack(list(metrics.values())).cpu()  # one host sync per log step
            now = time.perf_counter()
            rate = (step - tick_step) / max(now - tick, 1e-9)  # stack updates per second
            rows = [{"reward_set": name, "seed": seed, "step": step,
                     **{k: float(values[i, r]) for i, k in enumerate(metrics)},
                     "updates_per_s": rate, "run_updates_per_s": rate * len(todo)}
                    for r, (name, seed) in enumerate(todo)]
            log += rows
            if on_log is not None:
                on_log(rows)
            tick, tick_step = time.perf_counter(), step
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.num_steps:
            save_multirun(trainer, stack_path, {"runs": identity, "log": log})
    # Export each run, then drop the stack: a crash in between leaves the stack to resume from.
    for r, (name, seed) in enumerate(todo):
        checkpoint, fingerprint_path, log_path = run_paths(models_dir, name, seed)
        save_state_atomic(trainer.run_state(r), checkpoint)
        write_json_atomic(fingerprint_path, fingerprints[(name, seed)])
        write_json_atomic(log_path, [row for row in log if row["reward_set"] == name and row["seed"] == seed])
    stack_path.unlink(missing_ok=True)


def load_stacked_policy(models_dir: Path, runs: Sequence[tuple[str, int]], device: str) -> StackedPolicy:
    """The greedy policies of ``runs`` (reward set, seed), stacked for one batched call."""
    states = []
    for reward_set, seed in runs:
        checkpoint, _, _ = run_paths(models_dir, reward_set, seed)
        if not checkpoint.exists():
            raise FileNotFoundError(f"no trained model for reward set {reward_set!r}, seed {seed}: {checkpoint}")
        states.append(torch.load(checkpoint, map_location="cpu", weights_only=True))
    configs = {json.dumps(state["config"], sort_keys=True) for state in states}
    if len(configs) != 1:
        raise ValueError(f"runs {list(runs)} were trained with different IQL configs; retrain them together")
    return StackedPolicy(IQLConfig(**states[0]["config"]), [state["policy"] for state in states], device)


def load_learner(models_dir: Path, reward_set: str, seed: int, device: str) -> IQLLearner:
    """A trained run, ready to act."""
    checkpoint, _, _ = run_paths(models_dir, reward_set, seed)
    if not checkpoint.exists():
        raise FileNotFoundError(f"no trained model for reward set {reward_set!r}, seed {seed}: {checkpoint}")
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    learner = IQLLearner(IQLConfig(**state["config"]), device=device, seed=seed)
    learner.load_state_dict(state)
    return learner
