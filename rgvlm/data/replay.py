"""Frames on demand: replaying (env id, seed, actions) regenerates any episode exactly.

The dataset stores symbolic observations only; the RGB frames an LVLM looks at are
rendered here by replay, so ``data/`` stays small. Replay is deterministic: the same
seed gives the same layout and mission, and the same actions the same states.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from rgvlm.data.storage import OfflineDataset
from rgvlm.envs import encode_observation, make_env, render_frame, reset_quietly


def replay(
    env_id: str,
    seed: int,
    actions: Sequence[int],
    env_kwargs: dict | None = None,
    tile_size: int = 16,
    frames: bool | Collection[int] = True,
) -> dict[str, np.ndarray | list]:
    """Replay an episode. Returns ``frames`` uint8 [T+1, h, w, 3] (if asked; a collection of
    time indices renders only those, in increasing order, as [len, h, w, 3]), the
    symbolic ``grid`` [T+1, H, W, 3] and ``carry`` [T+1, 2], ``rewards`` [T] and the
    privileged ``progress`` [T], and the ``mission``."""
    env = make_env(env_id, **(env_kwargs or {}))
    reset_quietly(env, seed)
    grids, carries, images, rewards, progress = [], [], [], [], []

    wanted = None if isinstance(frames, bool) else set(frames)

    def observe() -> None:
        grid, carry = encode_observation(env)
        grids.append(grid)
        carries.append(carry)
        if (frames is True) or (wanted is not None and len(grids) - 1 in wanted):
            images.append(render_frame(env, tile_size))

    observe()
    mission = env.unwrapped.mission
    for t, action in enumerate(actions):
        _, reward, terminated, truncated, info = env.step(int(action))
        rewards.append(reward)
        progress.append(info["progress"])
        observe()
        if (terminated or truncated) and t != len(actions) - 1:
            raise ValueError(f"{env_id} seed {seed}: the episode ended at step {t}, before its {len(actions)} actions")
    env.close()
    out = {
        "mission": mission,
        "grid": np.stack(grids),
        "carry": np.stack(carries),
        "rewards": np.asarray(rewards, dtype=np.float32),
        "progress": np.asarray(progress, dtype=np.int8),
    }
    if frames is not False:
        out["frames"] = np.stack(images) if images else np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return out


def replay_dataset_episode(dataset: OfflineDataset, index: int, tile_size: int = 16,
                           frames: bool | Collection[int] = True) -> dict:
    """Replay episode ``index`` of ``dataset`` with the environment settings it was built with."""
    e = dataset.episodes[index]
    actions = dataset.actions[dataset.episode_steps(index)]
    return replay(e["env_id"], e["seed"], actions, dataset.manifest.get("env"), tile_size, frames)
