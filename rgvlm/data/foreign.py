"""Any Minari dataset as the dataset view the reward methods label (:class:`ForeignDataset`).

The labelling methods read an :class:`~rgvlm.data.storage.OfflineDataset`: the episode table
(mission, sub-tasks, offsets), actions, rewards, terminals and the privileged progress. A
``ForeignDataset`` is one, read from Minari, plus what the suite's dataset gets from the suite:

- ``frames``: where the frames come from (:mod:`rgvlm.data.frames`): the episode replayed
  through ``recover_environment()`` when the observations are not images, else the image
  observations themselves;
- ``action_names``: the words the prompts use for each action (given; else the dataset's own,
  its metadata ``action_names``; else MiniGrid's names for a MiniGrid level, the suite's for the
  suite, ``get_action_meanings()`` where an environment has it, else ``action <i>``);
- sub-tasks: an episode's metadata ``subtasks`` (a list of texts, e.g. an ALFRED import's
  sub-goals) where there is one, else the suite's mission clauses, else the mission as one;
- ground truth, for the scripted annotator and label quality only: the ``progress`` info where
  the episodes carry one (the suite's environment does), else success, read as one sub-task
  (the mission) completed at a terminating step with a positive reward. For a single-goal level
  such as BabyAI's GoToLocal, success IS the one sub-task.

A dataset exported from this project (its environment ``RGVLM/Ordered-v0``) also gets back its
symbolic observations, level ids and level arguments, so every method can relabel it; any other
dataset holds placeholders there, and only methods that need no more than frames, actions and
the mission can label it (:attr:`rgvlm.rewards.registry.RewardMethod.needs_suite_observations`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rgvlm.data.frames import EnvReplay, FrameSource, ReplayEpisode, StoredFrames
from rgvlm.data.minari_store import episode_metadata
from rgvlm.data.storage import OfflineDataset

FRAME_MODES = ("auto", "replay", "observation")
#: MiniGrid's action names, as the suite's prompts word them (its "done" is a no-op).
MINIGRID_ACTION_WORDS = {"left": "turn left", "right": "turn right", "forward": "move forward", "pickup": "pick up",
                         "drop": "drop", "toggle": "toggle", "done": "done"}


@dataclass
class ForeignDataset(OfflineDataset):
    """An :class:`OfflineDataset` read from elsewhere, with its own frames and action names."""

    frames: FrameSource | None = None
    action_names: tuple[str, ...] = ()
    episode_limit: int = 0
    #: Where it came from and how its frames and ground truth were read (for the summary).
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def max_episode_limit(self) -> int:
        return self.episode_limit


def image_keys(space) -> list[str | None]:
    """The observation entries that are RGB images by Minari's own rule (uint8, 0..255, at least
    32x32): None for an image observation, else the keys of a Dict observation that are."""
    import gymnasium as gym
    from minari.dataset.minari_storage import is_image_space

    def rgb(s) -> bool:
        return is_image_space(s) and len(s.shape) == 3 and s.shape[-1] == 3

    if rgb(space):
        return [None]
    if isinstance(space, gym.spaces.Dict):
        return [key for key, sub in space.spaces.items() if rgb(sub)]
    return []


def resolve_frames(mode: str, space, has_env: bool) -> tuple[str, str | None]:
    """``("replay", None)`` or ``("observation", key)`` for ``--frames`` ``mode``: ``auto`` takes
    the image observations if there are any, else replay; ``observation:<key>`` names the entry."""
    kind, _, key = mode.partition(":")
    if kind not in FRAME_MODES:
        raise ValueError(f"frames={mode!r}: expected one of auto, replay, observation, observation:<key>")
    images = image_keys(space)
    if kind == "auto":
        kind = "observation" if images else "replay"
    if kind == "replay":
        if not has_env:
            raise ValueError("frames=replay: the dataset has no environment spec, so its episodes cannot be replayed; "
                             "it needs image observations (--frames observation)")
        return "replay", None
    if key:
        if key not in images:
            raise ValueError(f"frames={mode!r}: {key!r} is not an RGB image entry of the observations "
                             f"(image entries: {images or 'none'})")
        return "observation", key
    if len(images) != 1:
        raise ValueError(f"frames={mode!r}: the observations have {len(images)} RGB image entries ({images}); "
                         "name one with observation:<key>" if images else
                         f"frames={mode!r}: no observation is an RGB image (uint8 [h>=32, w>=32, 3]); use replay")
    return "observation", images[0]


def action_names_of(env: Any, n: int) -> tuple[str, ...]:
    """Words for actions 0..n-1 of ``env`` (module docstring); ``env`` may be None."""
    from rgvlm.envs import ACTION_NAMES
    from rgvlm.envs.learner import LearnerEnv

    u = None if env is None else env.unwrapped
    if isinstance(u, LearnerEnv):
        return ACTION_NAMES[:n]
    actions = getattr(u, "actions", None)
    if actions is not None and hasattr(actions, "__members__") and len(actions) >= n:
        by_value = {int(member): name for name, member in actions.__members__.items()}
        return tuple(MINIGRID_ACTION_WORDS.get(by_value[i], by_value[i]) for i in range(n))
    meanings = getattr(u, "get_action_meanings", None)
    if callable(meanings):
        return tuple(str(m).lower() for m in meanings())[:n]
    return tuple(f"action {i}" for i in range(n))


def from_minari(mdataset, frames: str = "auto", mission: str | None = None,
                action_names: tuple[str, ...] | None = None) -> ForeignDataset:
    """Read every episode of the Minari dataset ``mdataset`` (module docstring). Fails, naming
    what is missing, before any frame is rendered or any LVLM asked."""
    import gymnasium as gym

    from rgvlm.envs import LEARNER_ENV_ID, SUBTASK_SEPARATOR, env_id_for

    name = mdataset.spec.dataset_id
    if not isinstance(mdataset.action_space, gym.spaces.Discrete):
        raise ValueError(f"{name}: action space {mdataset.action_space}, expected Discrete: the prompts name each action")
    n_actions = int(mdataset.action_space.n)
    space = mdataset.observation_space
    spec = mdataset.env_spec
    has_mission = isinstance(space, gym.spaces.Dict) and "mission" in space.spaces
    if not has_mission and mission is None:
        raise ValueError(f"{name}: the observations hold no 'mission' entry; pass the task's instruction (--mission)")
    frame_kind, frame_key = resolve_frames(frames, space, spec is not None)
    if action_names is not None and len(action_names) != n_actions:
        raise ValueError(f"action_names: {len(action_names)} names given, the action space has {n_actions} actions")
    if action_names is None and mdataset.storage.metadata.get("action_names") is not None:
        action_names = tuple(str(a) for a in mdataset.storage.metadata["action_names"])
        if len(action_names) != n_actions:
            raise ValueError(f"{name}: its metadata 'action_names' has {len(action_names)} words, the action space "
                             f"{n_actions} actions")
    metas = episode_metadata(mdataset)
    if frame_kind == "replay":
        unseeded = [int(m.get("id", i)) for i, m in enumerate(metas) if m.get("seed") is None]
        if unseeded:
            raise ValueError(f"{name}: episodes {unseeded[:10]} have no recorded reset seed, so they cannot be replayed "
                             "(collect with DataCollector.reset(seed=...) or its automatic seeds, or store image "
                             "observations)")
    suite = spec is not None and spec.id == LEARNER_ENV_ID

    episodes: list[dict[str, Any]] = []
    actions, rewards, terminals, progress, grids, carries, stored_frames = [], [], [], [], [], [], []
    step_start = obs_start = 0
    truth = "progress info"
    for i, episode in enumerate(mdataset.iterate_episodes()):
        length = len(episode.rewards)
        if length == 0:
            raise ValueError(f"{name}: episode {episode.id} has no steps")
        text = str(episode.observations["mission"][0]) if has_mission else mission
        done = np.asarray(episode.terminations, dtype=bool)
        info_progress = (episode.infos or {}).get("progress")
        if info_progress is not None and len(info_progress) == length + 1:
            steps_progress = np.asarray(info_progress[1:], dtype=np.int64)
        else:
            truth = "success (a terminating step with a positive reward completes the mission)"
            steps_progress = np.cumsum(done & (np.asarray(episode.rewards) > 0)).clip(max=1)
        named = metas[i].get("subtasks")
        if named is not None:  # the dataset names each episode's sub-tasks (e.g. an ALFRED import)
            subtasks = [str(s) for s in named]
            if int(steps_progress.max(initial=0)) > len(subtasks):
                raise ValueError(f"{name}: episode {episode.id} names {len(subtasks)} sub-tasks (metadata 'subtasks') "
                                 f"but its progress info reaches {int(steps_progress.max())}")
        else:
            subtasks = text.split(SUBTASK_SEPARATOR) if suite else [text]
        if int(steps_progress.max(initial=0)) > len(subtasks):
            subtasks = [text] * int(steps_progress.max())  # more completions than clauses: name the mission each time
        k = len(subtasks)
        options = metas[i].get("options") or None
        episodes.append({
            "env_id": env_id_for(int(options["num_subtasks"])) if suite else (spec.id if spec else name),
            "seed": metas[i].get("seed"), "options": options, "minari_id": int(episode.id),
            "k": k, "kind": str(metas[i].get("kind", "minari")), "mission": text, "subtasks": subtasks,
            "length": length, "success": bool(done[-1]), "final_progress": int(steps_progress[-1]),
            "step_start": step_start, "obs_start": obs_start,
        })
        step_start += length
        obs_start += length + 1
        actions.append(np.asarray(episode.actions, dtype=np.int64))
        rewards.append(np.asarray(episode.rewards, dtype=np.float32))
        terminals.append(done)
        progress.append(steps_progress)
        if suite:
            grids.append(np.asarray(episode.observations["grid"], dtype=np.uint8))
            carries.append(np.asarray(episode.observations["carry"], dtype=np.uint8))
        if frame_kind == "observation":
            images = episode.observations if frame_key is None else episode.observations[frame_key]
            stored_frames.append(np.asarray(images, dtype=np.uint8))

    n_obs = obs_start
    all_actions = np.concatenate(actions)
    if all_actions.min() < 0 or all_actions.max() >= n_actions:
        raise ValueError(f"{name}: actions outside 0..{n_actions - 1}")
    env_kwargs = {k: v for k, v in (spec.kwargs if spec else {}).items()
                  if k not in ("num_subtasks", "render_mode", "tile_size")}
    env = None
    if frame_kind == "replay" or action_names is None:
        env = mdataset.recover_environment(render_mode="rgb_array") if spec is not None else None
    names = tuple(action_names) if action_names is not None else action_names_of(env, n_actions)
    if frame_kind == "replay":
        replays = [ReplayEpisode(int(e["seed"]), e["options"], a) for e, a in zip(episodes, actions, strict=True)]
        source: FrameSource = EnvReplay(lambda: env, replays, stored=lambda e: mdataset[e].observations)
    else:
        source = StoredFrames.from_arrays(stored_frames)
    if suite:
        limit = env_kwargs.get("steps_per_subtask", 64) * (max(e["k"] for e in episodes) + 1)
    else:  # the spec's time limit where it has one (a level's own limit may only be known after reset)
        limit = max((spec.max_episode_steps or 0) if spec else 0, max(e["length"] for e in episodes))
    return ForeignDataset(
        manifest={"env": env_kwargs, "minari_id": name, "env_spec": spec.id if spec else None},
        episodes=episodes,
        obs_grid=np.concatenate(grids) if suite else np.zeros((n_obs, 0, 0, 3), dtype=np.uint8),
        obs_carry=np.concatenate(carries) if suite else np.zeros((n_obs, 0), dtype=np.uint8),
        actions=all_actions, rewards=np.concatenate(rewards), terminals=np.concatenate(terminals),
        progress=np.concatenate(progress).astype(np.int8),
        frames=source, action_names=names, episode_limit=int(limit),
        source={"minari_id": name, "env_spec": spec.id if spec else None, "suite": suite,
                "frames": frame_kind if frame_key is None else f"{frame_kind}:{frame_key}", "ground_truth": truth},
    )

