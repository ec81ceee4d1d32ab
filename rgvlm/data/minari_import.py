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


def spec_problem(spec) -> str | None:
    """Why the environment spec ``spec`` cannot be recreated (``gym.make(spec)``, and Minari's
    writing of it), or None when it can. Wrappers that do not record their constructor arguments
    (``RGBImgObsWrapper``, ``ImgObsWrapper`` and most of MiniGrid's) are stored with no arguments,
    and gymnasium refuses to rebuild them."""
    if spec is None:
        return None
    unrecorded = [w.name for w in spec.additional_wrappers if w.kwargs is None]
    if unrecorded:
        return (f"its environment spec {spec.id!r} wraps the environment in {', '.join(unrecorded)}, which "
                "gymnasium cannot recreate (the wrapper does not inherit from gymnasium.utils.RecordConstructorArgs)")
    try:
        spec.to_json()
    except Exception as error:  # noqa: BLE001 -- any reason is reported, with its own words
        return f"its environment spec {spec.id!r} cannot be serialised ({type(error).__name__}: {error})"
    return None


def small_images(space) -> list[str]:
    """Observation entries shaped like RGB images (uint8 [h, w, 3]) but smaller than Minari's and
    the LVLMs' 32x32: described as ``<entry> (h x w)``."""
    import gymnasium as gym

    entries = space.spaces.items() if isinstance(space, gym.spaces.Dict) else [(None, space)]
    found = []
    for key, sub in entries:
        shape = getattr(sub, "shape", None) or ()
        if getattr(sub, "dtype", None) == np.uint8 and len(shape) == 3 and shape[-1] == 3 and min(shape[:2]) < 32:
            found.append(f"{'observations' if key is None else f'observations[{key!r}]'} ({shape[0]}x{shape[1]})")
    return found


def resolve_frames(mode: str, space, has_env: bool, no_env_reason: str | None = None) -> tuple[str, str | None]:
    """``("replay", None)`` or ``("observation", key)`` for ``--frames`` ``mode``: ``auto`` takes
    the image observations if there are any, else replay; ``observation:<key>`` names the entry.
    ``no_env_reason``: why the episodes cannot be replayed although there is a spec."""
    kind, _, key = mode.partition(":")
    if kind not in FRAME_MODES:
        raise ValueError(f"frames={mode!r}: expected one of auto, replay, observation, observation:<key>")
    images = image_keys(space)
    if kind == "auto":
        kind = "observation" if images else "replay"
    if kind == "replay":
        if no_env_reason is not None:
            raise ValueError(f"frames={mode}: the episodes cannot be replayed: {no_env_reason}. Fix: collect the dataset "
                             "with image observations of at least 32x32 (then --frames observation), or wrap the "
                             "environment only in wrappers that inherit from gymnasium.utils.RecordConstructorArgs")
        if not has_env:
            small = small_images(space)
            raise ValueError("frames=replay: the dataset has no environment spec, so its episodes cannot be replayed; "
                             "it needs image observations (--frames observation)"
                             + (f"; {', '.join(small)} is too small to show an LVLM: at least 32x32 pixels" if small else ""))
        return "replay", None
    if key:
        if key not in images:
            raise ValueError(f"frames={mode!r}: {key!r} is not an RGB image entry of the observations "
                             f"(image entries: {images or 'none'})")
        return "observation", key
    if len(images) != 1:
        raise ValueError(f"frames={mode!r}: the observations have {len(images)} RGB image entries ({images}); "
                         "name one with observation:<key>" if images else
                         f"frames={mode!r}: no observation is an RGB image (uint8 [h>=32, w>=32, 3]); use replay"
                         + "".join(f"; {entry} is too small to show an LVLM" for entry in small_images(space)))
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


def _read_episodes(mdataset):
    """The episodes of ``mdataset``, a damaged file (truncated HDF5, missing datasets) reported as
    a ValueError naming the episode and the file."""
    indices = list(mdataset.episode_indices)
    for index in indices:
        try:
            episode = mdataset[int(index)]
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as error:
            raise ValueError(f"{mdataset.spec.dataset_id}: episode {int(index)} cannot be read from "
                             f"{mdataset.storage.data_path} ({type(error).__name__}: {error}); the file is damaged or "
                             "truncated: copy or collect it again") from error
        yield episode


def _length(observations: Any) -> int | None:
    """Entries of an episode's observations (each entry of a Dict the same, else None)."""
    if isinstance(observations, dict):
        lengths = {_length(v) for v in observations.values()}
        return lengths.pop() if len(lengths) == 1 else None
    return len(observations)


def check_episode(name: str, episode, frame_kind: str, frame_key: str | None) -> int:
    """The number of steps of ``episode``, after checking what labelling it needs: steps, fields
    of one length (observations one more), finite rewards, frames of an image's shape. Every
    failure names the episode and the field."""
    where = f"{name}: episode {episode.id}"
    lengths = {field: len(getattr(episode, field)) for field in ("actions", "rewards", "terminations", "truncations")}
    if lengths["actions"] == 0:
        raise ValueError(f"{where}, field actions: the episode has no steps")
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: the lengths of its fields disagree ({lengths}); each must have one entry per step")
    length = lengths["actions"]
    observations = episode.observations
    if isinstance(observations, dict):
        for key, value in observations.items():
            if _length(value) != length + 1:
                raise ValueError(f"{where}, field observations[{key!r}]: {_length(value)} entries, expected "
                                 f"{length + 1} (one more than its {length} steps)")
    elif _length(observations) != length + 1:
        raise ValueError(f"{where}, field observations: {_length(observations)} entries, expected {length + 1} "
                         f"(one more than its {length} steps)")
    rewards = np.asarray(episode.rewards, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        raise ValueError(f"{where}, field rewards: {rewards[bad[0]]} at step {int(bad[0])} ({bad.size} non-finite "
                         "values); rewards must be finite")
    if frame_kind == "observation":
        images = np.asarray(observations if frame_key is None else observations[frame_key])
        field = "observations" if frame_key is None else f"observations[{frame_key!r}]"
        if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < 32:
            raise ValueError(f"{where}, field {field}: frames of shape {images.shape[1:]}, expected RGB images of at "
                             "least 32x32 pixels to show an LVLM")
    return length


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
    problem = spec_problem(spec)
    frame_kind, frame_key = resolve_frames(frames, space, spec is not None, problem)
    if action_names is not None and len(action_names) != n_actions:
        raise ValueError(f"action_names: {len(action_names)} names given, the action space has {n_actions} actions")
    if action_names is None and mdataset.storage.metadata.get("action_names") is not None:
        action_names = tuple(str(a) for a in mdataset.storage.metadata["action_names"])
        if len(action_names) != n_actions:
            raise ValueError(f"{name}: its metadata 'action_names' has {len(action_names)} words, the action space "
                             f"{n_actions} actions")
    try:
        metas = episode_metadata(mdataset)
    except OSError as error:  # h5py cannot open the file: cut short by a copy, a full disk, a crash
        raise ValueError(f"{name}: its file {mdataset.storage.data_path} cannot be read ({error}); the file is damaged "
                         "or truncated: copy or collect it again") from error
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
    for i, episode in enumerate(_read_episodes(mdataset)):
        length = check_episode(name, episode, frame_kind, frame_key)
        text = str(episode.observations["mission"][0]) if has_mission else mission
        if not text.strip():
            if mission is None:
                raise ValueError(f"{name}: episode {episode.id}, field observations['mission']: empty; pass the task's "
                                 "instruction (--mission)")
            text = mission
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
    if spec is not None and problem is None and (frame_kind == "replay" or action_names is None):
        env = mdataset.recover_environment(render_mode="rgb_array")
    elif spec is not None and action_names is None:
        # Frames come from the observations; only the action words are wanted: the environment
        # without the wrappers that cannot be recreated names them, when its actions are the same.
        import dataclasses

        try:
            base = gym.make(dataclasses.replace(spec, additional_wrappers=()))
        except Exception:  # noqa: BLE001 -- then the actions are named by number
            base = None
        if base is not None and base.action_space == mdataset.action_space:
            env = base
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
                "frames": frame_kind if frame_key is None else f"{frame_kind}:{frame_key}", "ground_truth": truth,
                "env_spec_problem": problem},
    )

