"""The offline dataset (``data/``) as a Minari dataset, for d3rlpy, CORL, TorchRL and the rest.

One Minari episode per dataset episode, nothing lost:

- observations: ``{"grid", "carry", "mission"}``, T + 1 per episode (the learner's view, the
  environment :data:`~rgvlm.envs.LEARNER_ENV_ID` emits; the mission as a ``Text`` space);
- actions (the suite's six), and the rewards: the sparse task reward, or any reward set of
  ``outputs/rewards/`` in its place;
- terminations (success only) and truncations (every other episode's last step: a time-out,
  or the end of a partial episode's wander);
- infos: the level's privileged ``progress``, ``completed`` and ``num_subtasks``, T + 1 each
  (the reset's first), exactly what the environment's ``info`` holds;
- per episode: the reset ``seed`` and ``options={"num_subtasks": k}``, so that
  ``dataset.recover_environment()`` (the spec of ``RGVLM/Ordered-v0`` with the dataset's level
  arguments) replays any episode exactly; and the mixture ``kind``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rgvlm.data.minari_store import write_minari
from rgvlm.data.storage import OfflineDataset

#: The dataset id an export gets when none is given: one per reward set.
DEFAULT_ID = "rgvlm/ordered/{rewards}-v0"
SPARSE = "sparse"


def default_dataset_id(reward_name: str | None) -> str:
    """``rgvlm/ordered/<reward set>-v0``."""
    return DEFAULT_ID.format(rewards=reward_name or SPARSE)


def learner_env(dataset: OfflineDataset):
    """The environment the dataset's episodes come from, with the level arguments it was built with."""
    import gymnasium as gym

    from rgvlm.envs import LEARNER_ENV_ID

    return gym.make(LEARNER_ENV_ID, disable_env_checker=True, **dataset.manifest["env"])


def episode_buffers(dataset: OfflineDataset, rewards: np.ndarray | None = None) -> list:
    """Minari ``EpisodeBuffer``s of every episode (module docstring); ``rewards`` [N] replaces
    the sparse task reward."""
    from minari.data_collector import EpisodeBuffer

    rewards = dataset.rewards if rewards is None else np.asarray(rewards, dtype=np.float32)
    if rewards.shape != (dataset.num_transitions,):
        raise ValueError(f"rewards of shape {rewards.shape}: expected one per transition, ({dataset.num_transitions},)")
    buffers = []
    for index, episode in enumerate(dataset.episodes):
        steps = dataset.episode_steps(index)
        length = episode["length"]
        observed = slice(episode["obs_start"], episode["obs_start"] + length + 1)
        progress = np.concatenate([[0], dataset.progress[steps]]).astype(np.int64)
        terminations = dataset.terminals[steps].astype(bool)
        truncations = np.zeros(length, dtype=bool)
        truncations[-1] = not terminations[-1]
        buffers.append(EpisodeBuffer(
            id=index, seed=int(episode["seed"]), options={"num_subtasks": int(episode["k"])},
            observations={"grid": dataset.obs_grid[observed], "carry": dataset.obs_carry[observed],
                          "mission": [episode["mission"]] * (length + 1)},
            actions=dataset.actions[steps].astype(np.int64),
            rewards=rewards[steps],
            terminations=terminations,
            truncations=truncations,
            infos={"progress": progress, "completed": np.concatenate([[0], np.diff(progress)]).astype(np.int64),
                   "num_subtasks": np.full(length + 1, episode["k"], dtype=np.int64)},
        ))
    return buffers


def export_minari(dataset: OfflineDataset, dataset_id: str, rewards: np.ndarray | None = None,
                  reward_name: str | None = None, root: str | Path | None = None, overwrite: bool = False):
    """Write ``dataset`` as the Minari dataset ``dataset_id`` (with ``rewards``, the reward set
    ``reward_name``, in place of the sparse reward) and return it."""
    env = learner_env(dataset)
    try:
        buffers = episode_buffers(dataset, rewards)
        reward_text = (f"the reward set {reward_name!r} of outputs/rewards/ (rgvlm's rewards stage)" if reward_name
                       else "the sparse task reward (1 on success)")
        return write_minari(
            dataset_id, buffers, env=env, observation_space=env.observation_space, action_space=env.action_space,
            root=root, overwrite=overwrite,
            episode_metadata=[{"kind": e["kind"]} for e in dataset.episodes],
            extra_metadata={"rgvlm_rewards": reward_name or SPARSE, "rgvlm_dataset": _manifest_record(dataset)},
            algorithm_name="rgvlm mixture: BabyAI bot (expert), bot with random actions (noisy), bot then random (partial)",
            author="rgvlm",
            description=(
                "rgvlm's offline dataset of the long-horizon BabyAI suite (missions of k ordered sub-tasks). "
                f"Rewards: {reward_text}. Observations: the full symbolic grid, the carried object and the mission. "
                "infos hold privileged sub-task progress (ground truth for diagnostics; never a learner input). "
                "Replay an episode with recover_environment().reset(seed=<episode seed>, options=<episode options>)."),
            requirements=["minigrid>=3.0"],
        )
    finally:
        env.close()


def _manifest_record(dataset: OfflineDataset) -> dict[str, Any]:
    """What built the source dataset (its manifest's parameters), for the Minari metadata."""
    return {key: dataset.manifest[key] for key in ("env", "dataset", "builder") if key in dataset.manifest}
