"""The offline dataset's on-disk format and its in-memory view.

Formats are chosen so the bytes depend on nothing but the content: raw ``.npy`` arrays
(no timestamps, unlike ``.npz``'s zip entries) and JSON written with sorted keys, each file
written atomically (:mod:`rgvlm.atomic`).

``data/`` holds:

- ``manifest.json``: format version, the parameters that built it, array shapes.
- ``episodes.json``: one record per episode (env id, layout seed, k, kind, mission,
  sub-task texts, length, success, final progress, offsets into the arrays).
- ``obs_grid.npy`` uint8 [N_obs, H, W, 3] and ``obs_carry.npy`` uint8 [N_obs, 2]:
  every observation, T + 1 per episode (the last one follows the last action).
- ``actions.npy`` int8 [N], ``rewards.npy`` float32 [N] (the sparse task reward),
  ``terminals.npy`` bool [N] (true only on the success step; time-outs are not terminal).
- ``progress.npy`` int8 [N]: privileged ground truth, sub-tasks done after each step.
  Read by the scripted annotator, the oracle reward and label-quality diagnostics only,
  never by a learner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from rgvlm.atomic import sweep_debris, write_json_atomic, write_npy_atomic

FORMAT_VERSION = 1
ARRAY_FILES = {
    "obs_grid": np.uint8,
    "obs_carry": np.uint8,
    "actions": np.int8,
    "rewards": np.float32,
    "terminals": np.bool_,
    "progress": np.int8,
}
EPISODE_FIELDS = (
    "env_id", "seed", "k", "kind", "mission", "subtasks", "length", "success",
    "final_progress", "step_start", "obs_start",
)


@dataclass
class OfflineDataset:
    """The dataset in memory. ``episodes`` is a list of dicts with :data:`EPISODE_FIELDS`."""

    manifest: dict[str, Any]
    episodes: list[dict[str, Any]]
    obs_grid: np.ndarray
    obs_carry: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    progress: np.ndarray

    @property
    def num_transitions(self) -> int:
        return int(self.actions.shape[0])

    @cached_property
    def episode_of_step(self) -> np.ndarray:
        """Episode index of every transition, int64 [N]."""
        lengths = np.array([e["length"] for e in self.episodes], dtype=np.int64)
        return np.repeat(np.arange(len(self.episodes), dtype=np.int64), lengths)

    @cached_property
    def step_in_episode(self) -> np.ndarray:
        """Time index t of every transition within its episode, int64 [N]."""
        starts = np.array([e["step_start"] for e in self.episodes], dtype=np.int64)
        return np.arange(self.num_transitions, dtype=np.int64) - starts[self.episode_of_step]

    @cached_property
    def obs_index(self) -> np.ndarray:
        """Row of ``obs_grid`` observed before each transition, int64 [N]."""
        obs_starts = np.array([e["obs_start"] for e in self.episodes], dtype=np.int64)
        return obs_starts[self.episode_of_step] + self.step_in_episode

    @cached_property
    def next_obs_index(self) -> np.ndarray:
        """Row of ``obs_grid`` observed after each transition, int64 [N]."""
        return self.obs_index + 1

    @cached_property
    def progress_before(self) -> np.ndarray:
        """Privileged: sub-tasks done before each transition, int8 [N]."""
        before = np.empty_like(self.progress)
        before[1:] = self.progress[:-1]
        starts = np.array([e["step_start"] for e in self.episodes], dtype=np.int64)
        before[starts] = 0
        return before

    @cached_property
    def completed_per_step(self) -> np.ndarray:
        """Privileged: sub-tasks each transition completed, int16 [N] (0, or 1 and rarely more)."""
        return self.progress.astype(np.int16) - self.progress_before.astype(np.int16)

    @property
    def max_episode_limit(self) -> int:
        """The longest trajectory the dataset's environments allow (time limit of its largest k)."""
        steps_per_subtask = self.manifest["env"]["steps_per_subtask"]
        return steps_per_subtask * (max(e["k"] for e in self.episodes) + 1)

    @cached_property
    def missions(self) -> list[str]:
        """The distinct missions, in order of first appearance."""
        return list(dict.fromkeys(e["mission"] for e in self.episodes))

    @cached_property
    def mission_of_step(self) -> np.ndarray:
        """Index into :attr:`missions` of every transition, int64 [N]."""
        lookup = {m: i for i, m in enumerate(self.missions)}
        per_episode = np.array([lookup[e["mission"]] for e in self.episodes], dtype=np.int64)
        return per_episode[self.episode_of_step]

    def episode_steps(self, index: int) -> slice:
        """The transitions of episode ``index``."""
        e = self.episodes[index]
        return slice(e["step_start"], e["step_start"] + e["length"])


def save_dataset(directory: Path, manifest: dict[str, Any], episodes: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> None:
    """Write a dataset; every file atomically, the manifest last (it marks completeness)."""
    directory.mkdir(parents=True, exist_ok=True)
    # data/ is tracked by data.dvc: what a killed earlier collection left must not be committed.
    sweep_debris(directory)
    for name, dtype in ARRAY_FILES.items():
        array = arrays[name]
        if array.dtype != dtype:
            raise TypeError(f"array {name}: dtype {array.dtype}, expected {np.dtype(dtype)}")
        write_npy_atomic(directory / f"{name}.npy", array)
    write_json_atomic(directory / "episodes.json", episodes)
    shapes = {name: list(arrays[name].shape) for name in ARRAY_FILES}
    write_json_atomic(directory / "manifest.json", {**manifest, "format_version": FORMAT_VERSION, "shapes": shapes})


def load_dataset(directory: str | Path) -> OfflineDataset:
    """Load the dataset in ``directory`` (``data/`` by default in the pipeline)."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"{manifest_path} not found: build the dataset with `python -m rgvlm.data collect` "
            "or restore it with `dvc pull data.dvc`"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path}: format_version={manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    episodes = json.loads((directory / "episodes.json").read_text())
    arrays = {name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in ARRAY_FILES}
    for name, shape in manifest["shapes"].items():
        if list(arrays[name].shape) != shape:
            raise ValueError(f"{directory}/{name}.npy has shape {arrays[name].shape}, manifest says {shape}")
    return OfflineDataset(manifest=manifest, episodes=episodes, **arrays)
