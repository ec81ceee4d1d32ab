"""Training every (reward set, seed) run of the pipeline, resumably.

Each run's checkpoint lives in ``outputs/models/<reward set>/seed<seed>.pt`` beside a
fingerprint of what it was trained from (IQL config, reward set content, dataset). A
rerun resumes a run whose fingerprint matches, skips one that is finished, and starts
over one whose inputs changed, so an interrupted training stage loses at most
``checkpoint_every`` updates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rgvlm.data.storage import OfflineDataset, write_json_atomic
from rgvlm.rl.iql import IQLConfig, IQLLearner, load_checkpoint, make_uniform_sampler, train


def transition_tensors(dataset: OfflineDataset, rewards: np.ndarray, device: str) -> dict[str, torch.Tensor]:
    """The dataset laid out per transition, resident on ``device``. ``mission`` holds
    indices into the mission table (see :attr:`OfflineDataset.missions`)."""
    if rewards.shape != (dataset.num_transitions,):
        raise ValueError(f"rewards have shape {rewards.shape}, the dataset has {dataset.num_transitions} transitions")
    as_tensor = lambda array: torch.as_tensor(np.ascontiguousarray(array), device=device)  # noqa: E731
    return {
        "grid": as_tensor(dataset.obs_grid[dataset.obs_index]),
        "carry": as_tensor(dataset.obs_carry[dataset.obs_index]),
        "next_grid": as_tensor(dataset.obs_grid[dataset.next_obs_index]),
        "next_carry": as_tensor(dataset.obs_carry[dataset.next_obs_index]),
        "mission": as_tensor(dataset.mission_of_step),
        "action": as_tensor(dataset.actions.astype(np.int64)),
        "reward": as_tensor(rewards.astype(np.float32)),
        # Time-outs are not terminal: only success ends an episode for bootstrapping.
        "done": as_tensor(dataset.terminals.astype(np.float32)),
    }


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
    for key in ("num_steps", "log_every", "checkpoint_every"):
        config_dict.pop(key)
    return {"config": config_dict, "rewards_sha256": digest, "dataset_sha256": data, "seed": seed}


def run_paths(models_dir: Path, reward_set: str, seed: int) -> tuple[Path, Path, Path]:
    """(checkpoint, fingerprint, training log) of one run."""
    base = models_dir / reward_set / f"seed{seed}"
    return base.with_suffix(".pt"), base.with_suffix(".fingerprint.json"), base.with_suffix(".log.json")


def train_run(
    dataset: OfflineDataset,
    mission_table: torch.Tensor,
    reward_set: str,
    rewards: np.ndarray,
    seed: int,
    config: IQLConfig,
    device: str,
    models_dir: Path,
    on_log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train (or resume, or skip if finished) one run; returns its log rows."""
    checkpoint, fingerprint_path, log_path = run_paths(models_dir, reward_set, seed)
    fingerprint = run_fingerprint(config, rewards, dataset, seed)
    if fingerprint_path.exists() and json.loads(fingerprint_path.read_text()) != fingerprint:
        for stale in (checkpoint, log_path):
            stale.unlink(missing_ok=True)  # inputs changed: the old checkpoint is not this run
    write_json_atomic(fingerprint_path, fingerprint)
    learner = IQLLearner(config, device=device, seed=seed)
    log: list[dict] = []
    if checkpoint.exists():
        load_checkpoint(learner, checkpoint)
    if learner.step > config.num_steps:  # trained longer than now asked: start over
        checkpoint.unlink()
        learner = IQLLearner(config, device=device, seed=seed)
    elif checkpoint.exists():
        if log_path.exists():
            log = [row for row in json.loads(log_path.read_text()) if row["step"] <= learner.step]

    def record(step: int, metrics: dict[str, float], rate: float) -> None:
        row = {"reward_set": reward_set, "seed": seed, "step": step, **metrics, "updates_per_s": rate}
        log.append(row)
        # Written at every log step; on resume, rows past the checkpoint are dropped.
        write_json_atomic(log_path, log)
        if on_log is not None:
            on_log(row)

    tensors = transition_tensors(dataset, rewards, device)
    sampler = make_uniform_sampler(tensors, config.batch_size, mission_table=mission_table)
    train(learner, sampler, checkpoint_path=checkpoint, on_log=record)
    write_json_atomic(log_path, log)
    return log


def load_learner(models_dir: Path, reward_set: str, seed: int, device: str) -> IQLLearner:
    """A trained run, ready to act."""
    checkpoint, _, _ = run_paths(models_dir, reward_set, seed)
    if not checkpoint.exists():
        raise FileNotFoundError(f"no trained model for reward set {reward_set!r}, seed {seed}: {checkpoint}")
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    learner = IQLLearner(IQLConfig(**state["config"]), device=device, seed=seed)
    learner.load_state_dict(state)
    return learner
