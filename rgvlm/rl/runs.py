"""Training every (reward set, seed) run of the pipeline at once, resumably.

All runs that still need training form one :class:`~rgvlm.rl.multirun.MultiRunIQL` stack
(stacked parameters, one vmapped update, the dataset resident on the device). While it
trains, the whole stack is checkpointed atomically to ``outputs/models/_stack.pt`` with the
fingerprints of its runs and their training log, at a ``checkpoint_every`` step once at least
``checkpoint_interval_s`` seconds have passed since the last write (a crash loses at most that
long plus ``checkpoint_every`` updates); the checkpoint holds what exact resume needs and
nothing else (:meth:`MultiRunIQL.state_dict`). When the stack finishes, every run is exported
to ``outputs/models/<reward set>/seed<seed>.pt`` (the :class:`IQLLearner` format evaluation
loads) beside its fingerprint (IQL config, reward set content, dataset, seed) and its log.
Each write's size and time can be reported (``train_runs(checkpoint_report=...)``).

A rerun skips every run whose fingerprint matches and that reached ``num_steps``, resumes
the stack if its runs are exactly the ones left, and otherwise trains the runs left from the
start. A run's result does not depend on which other runs share its stack (see
:func:`rgvlm.rl.multirun.sample_indices`), so adding a reward set trains only the new runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from rgvlm.atomic import write_json_atomic
from rgvlm.data.storage import OfflineDataset
from rgvlm.rl.iql import LOOP_FIELDS, IQLConfig, IQLLearner, config_record, save_state_atomic
from rgvlm.rl.multirun import StackedPolicy, save_multirun
from rgvlm.rl.training import TrainingJob


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def run_fingerprint(config: IQLConfig, rewards: np.ndarray, dataset: OfflineDataset, seed: int,
                    bc_weights: np.ndarray | None = None) -> dict:
    """What a run's result depends on; a checkpoint is resumed only if this matches.
    ``bc_weights`` marks a behaviour-cloning baseline (its policy's per-transition weights)."""
    data = hashlib.sha256(json.dumps(dataset.manifest, sort_keys=True).encode()).hexdigest()
    config_dict = config_record(config)
    # How long and how often to log or checkpoint do not change the updates themselves.
    for key in LOOP_FIELDS:
        config_dict.pop(key)
    policy = "iql" if bc_weights is None else f"bc:{_sha256(bc_weights)}"
    return {"config": config_dict, "rewards_sha256": _sha256(rewards), "dataset_sha256": data, "seed": seed,
            "policy": policy}


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
    seeds: Sequence[int] | Mapping[str, Sequence[int]],
    config: IQLConfig,
    device: str,
    models_dir: Path,
    compile: bool = False,
    cuda_graphs: bool = False,
    on_log: Callable[[list[dict]], None] | None = None,
    bc_weights: Mapping[str, np.ndarray] | None = None,
    checkpoint_report: Path | None = None,
    observation_missions: np.ndarray | None = None,
) -> list[dict]:
    """Train every (reward set, seed) run not already finished, as one stack; returns the log
    rows of all runs (one row per run per ``log_every`` updates).

    ``checkpoint_report``: a JSON file written (atomically) with the size and write time of
    every stack checkpoint and of the final per-run exports (:func:`checkpoint_summary`).

    ``seeds`` is one list for every reward set, or a list per reward set. A name in
    ``bc_weights`` is a behaviour-cloning baseline: its policy imitates the dataset's actions
    weighted by that array (see :class:`~rgvlm.rl.multirun.MultiRunIQL`), and its entry in
    ``reward_sets`` is only what its (unused) critic trains on. With
    ``config.holdout_fraction`` > 0 the critic diagnostic (:mod:`rgvlm.rl.diagnostics`) is
    added to the log rows at every checkpoint step and at the end. ``mission_table`` and
    ``observation_missions`` are what :func:`learner_missions` returns."""
    bc_weights = dict(bc_weights or {})
    per_set = seeds if isinstance(seeds, Mapping) else {name: seeds for name in reward_sets}
    runs = [(name, int(seed)) for name in reward_sets for seed in per_set[name]]
    fingerprints = {run: run_fingerprint(config, reward_sets[run[0]], dataset, run[1], bc_weights.get(run[0]))
                    for run in runs}
    todo = [run for run in runs if not _finished(models_dir, *run, fingerprints[run], config.num_steps)]
    written: dict = {"stack": [], "skipped": 0, "resumed_from": None, "exports": None}
    if todo:
        written = _train_stack(dataset, mission_table, reward_sets, todo, fingerprints, config, device, models_dir,
                               compile, cuda_graphs, on_log, bc_weights, observation_missions)
    if checkpoint_report is not None:
        write_json_atomic(Path(checkpoint_report), _checkpoint_report(config, len(runs), len(todo), written))
    rows: list[dict] = []
    for name, seed in runs:
        rows += json.loads(run_paths(models_dir, name, seed)[2].read_text())
    return rows


def _train_stack(dataset, mission_table, reward_sets, todo, fingerprints, config, device, models_dir,
                 compile, cuda_graphs, on_log, bc_weights, observation_missions) -> dict:
    """Train the runs ``todo`` as one stack; returns what its checkpoints cost (see
    :func:`_checkpoint_report`)."""
    stack = TrainingJob(dataset, reward_sets, (), config, device, baselines=bc_weights, runs=todo, compile=compile,
                        cuda_graphs=cuda_graphs, mission_table=mission_table,
                        observation_missions=observation_missions).build()
    trainer = stack.trainer
    stack_path = models_dir / STACK_CHECKPOINT
    identity = [{"reward_set": name, **fingerprints[(name, seed)]} for name, seed in todo]
    log: list[dict] = []
    written: dict = {"stack": [], "skipped": 0, "resumed_from": None, "exports": None}
    if stack_path.exists():
        state = torch.load(stack_path, map_location=device, weights_only=True)
        if state["extra"].get("runs") == identity and state["step"] <= config.num_steps:
            trainer.load_state_dict(state)
            log = [row for row in state["extra"]["log"] if row["step"] <= trainer.step]
            written["resumed_from"] = trainer.step
        del state
    last_write = time.monotonic()  # the interval counts from the start (or resume) of this stack

    def checkpoint(step: int) -> None:
        nonlocal last_write
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.num_steps:
            if time.monotonic() - last_write >= config.checkpoint_interval_s:
                cost = save_multirun(trainer, stack_path, {"runs": identity, "log": log})
                written["stack"].append({"step": step, **cost})
                last_write = time.monotonic()
            else:
                written["skipped"] += 1

    def logged(rows: list[dict]) -> None:  # before checkpoint() runs: a checkpoint holds its step's rows
        log.extend(rows)
        if on_log is not None:
            on_log(rows)

    stack.train(config.num_steps, on_log=logged, on_step=checkpoint)
    # Export each run, then drop the stack: a crash in between leaves the stack to resume from.
    start, exported = time.perf_counter(), 0
    for r, (name, seed) in enumerate(todo):
        checkpoint, fingerprint_path, log_path = run_paths(models_dir, name, seed)
        save_state_atomic(trainer.run_state(r), checkpoint)
        exported += checkpoint.stat().st_size
        write_json_atomic(fingerprint_path, fingerprints[(name, seed)])
        write_json_atomic(log_path, [row for row in log if row["reward_set"] == name and row["seed"] == seed])
    written["exports"] = {"files": len(todo), "bytes": exported, "write_s": time.perf_counter() - start}
    stack_path.unlink(missing_ok=True)
    return written


def _checkpoint_report(config: IQLConfig, num_runs: int, trained: int, written: dict) -> dict:
    """What the training stage's checkpoints cost: one record per stack checkpoint written
    (``step``, ``bytes``, ``tensor_bytes`` -- the parameters, target critic and Adam state it
    must hold --, ``write_s``), the ``checkpoint_every`` steps skipped because
    ``checkpoint_interval_s`` had not passed, and the final per-run exports."""
    stack = written["stack"]
    exports = written["exports"] or {"files": 0, "bytes": 0, "write_s": 0.0}
    return {
        "runs": num_runs,
        "runs_trained": trained,
        "resumed_from_step": written["resumed_from"],
        "checkpoint_every": config.checkpoint_every,
        "checkpoint_interval_s": config.checkpoint_interval_s,
        "stack_written": len(stack),
        "stack_skipped": written["skipped"],
        "stack_bytes": max((c["bytes"] for c in stack), default=0),
        "stack_tensor_bytes": max((c["tensor_bytes"] for c in stack), default=0),
        "stack_write_s_total": sum(c["write_s"] for c in stack),
        "stack_write_s_max": max((c["write_s"] for c in stack), default=0.0),
        "stack_checkpoints": stack,
        "export_files": exports["files"],
        "export_bytes": exports["bytes"],
        "export_write_s": exports["write_s"],
    }


def checkpoint_summary(report: dict | Path) -> str:
    """One line on what the checkpoints of a training stage cost (a report or its JSON file)."""
    if not isinstance(report, dict):
        report = json.loads(Path(report).read_text())
    if not report["runs_trained"]:
        return f"checkpoints: none written (all {report['runs']} runs already trained)"
    mb = 1e6
    written, skipped = report["stack_written"], report["stack_skipped"]
    stack = (f"{written} stack checkpoint{'s' * (written != 1)} of {report['runs_trained']} runs, "
             f"{report['stack_bytes'] / mb:.1f} MB each (tensors {report['stack_tensor_bytes'] / mb:.1f} MB), "
             f"{report['stack_write_s_total']:.2f} s writing" if written else "no stack checkpoint")
    return (f"checkpoints: {stack}; {skipped} skipped (checkpoint_interval_s={report['checkpoint_interval_s']:g}); "
            f"{report['export_files']} run exports, {report['export_bytes'] / mb:.1f} MB in "
            f"{report['export_write_s']:.2f} s")


def load_stacked_policy(models_dir: Path, runs: Sequence[tuple[str, int]], device: str,
                        temperature: float = 0.0, seed: int = 0) -> StackedPolicy:
    """The policies of ``runs`` (reward set, seed), stacked for one batched call; greedy, or
    sampled at ``temperature`` > 0 from a generator seeded by ``seed``."""
    states = []
    for reward_set, seed in runs:
        checkpoint, _, _ = run_paths(models_dir, reward_set, seed)
        if not checkpoint.exists():
            raise FileNotFoundError(f"no trained model for reward set {reward_set!r}, seed {seed}: {checkpoint}")
        states.append(torch.load(checkpoint, map_location="cpu", weights_only=True))
    # How long and how often each run logged or checkpointed does not matter here (LOOP_FIELDS).
    configs = {json.dumps({k: v for k, v in state["config"].items() if k not in LOOP_FIELDS}, sort_keys=True)
               for state in states}
    if len(configs) != 1:
        raise ValueError(f"runs {list(runs)} were trained with different IQL configs; retrain them together")
    return StackedPolicy(IQLConfig(**states[0]["config"]), [state["policy"] for state in states], device,
                         temperature=temperature, seed=seed)


def load_learner(models_dir: Path, reward_set: str, seed: int, device: str) -> IQLLearner:
    """A trained run, ready to act."""
    checkpoint, _, _ = run_paths(models_dir, reward_set, seed)
    if not checkpoint.exists():
        raise FileNotFoundError(f"no trained model for reward set {reward_set!r}, seed {seed}: {checkpoint}")
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    learner = IQLLearner(IQLConfig(**state["config"]), device=device, seed=seed)
    learner.load_state_dict(state)
    return learner
