"""The suite as the learner sees it, as ONE Gymnasium environment: ``RGVLM/Ordered-v0``.

The suite's levels (``RGVLM/Ordered-k{k}-v0``) emit MiniGrid's 7x7 egocentric view, but the
offline dataset and every learner use the fully observed symbolic grid plus the carried object
(:func:`~rgvlm.envs.suite.encode_observation`), and one dataset mixes every k. A Minari dataset
has one environment spec, and ``recover_environment()`` must give back an environment whose
observations are the dataset's: this is it. ``reset(seed=s, options={"num_subtasks": k})``
starts exactly the level the dataset's episode of (k, s) started (the same ``make_env`` and
``reset_quietly`` as collection and replay), so replaying the stored actions regenerates the
stored observations and frames.

Observation: ``{"grid": uint8 [H, W, 3], "carry": uint8 [2], "mission": str}`` (the mission as
a Gymnasium ``Text`` space, which Minari stores as UTF-8 strings). Actions: the suite's six
(:data:`~rgvlm.envs.suite.NUM_ACTIONS`). ``info`` carries the level's privileged progress
(``progress``, ``completed``, ``num_subtasks``): ground truth for the scripted annotator and
label-quality diagnostics, never a learner input.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rgvlm.envs.suite import MAX_SUBTASKS, MIN_SUBTASKS, NUM_ACTIONS, encode_observation, grid_shape, render_frame

#: Characters a mission may use ("put the red key next to the grey ball, then open ..."), with
#: some room for a neighbouring level's wording; Text spaces check every character against it.
MISSION_CHARSET = string.ascii_letters + string.digits + " ,.'-"
#: Longer than any mission of the suite (six clauses of at most ~45 characters, joined).
MISSION_MAX_LENGTH = 512


def learner_observation_space(room_size: int = 6) -> spaces.Dict:
    """The learner's observation space for levels of ``room_size`` rooms."""
    height, width = grid_shape(room_size)
    return spaces.Dict({
        "grid": spaces.Box(0, 255, (height, width, 3), dtype=np.uint8),
        "carry": spaces.Box(0, 255, (2,), dtype=np.uint8),
        "mission": spaces.Text(max_length=MISSION_MAX_LENGTH, min_length=1, charset=MISSION_CHARSET),
    })


class LearnerEnv(gym.Env):
    """Every level of the suite behind one id, observed as the learner observes it.

    ``num_subtasks`` is the k of a reset without options; ``level_kwargs`` are the levels'
    construction arguments (the ``env`` section of params.yaml)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, num_subtasks: int = MIN_SUBTASKS, render_mode: str | None = None, tile_size: int = 16,
                 **level_kwargs: Any):
        self._check_k(num_subtasks, "num_subtasks")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        self.num_subtasks = num_subtasks
        self.render_mode = render_mode
        self.tile_size = tile_size
        self.level_kwargs = dict(level_kwargs)
        self.observation_space = learner_observation_space(self.level_kwargs.get("room_size", 6))
        self.action_space = spaces.Discrete(NUM_ACTIONS)
        self._levels: dict[int, gym.Env] = {}  # one level per k, made on first use
        self.level: gym.Env | None = None

    @staticmethod
    def _check_k(k: Any, name: str) -> None:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not MIN_SUBTASKS <= int(k) <= MAX_SUBTASKS:
            raise ValueError(f"{name}={k!r}: expected an integer in {MIN_SUBTASKS}..{MAX_SUBTASKS}")

    def _level(self, k: int) -> gym.Env:
        if k not in self._levels:
            from rgvlm.envs import env_id_for, make_env  # the package registers the levels

            self._levels[k] = make_env(env_id_for(k), **self.level_kwargs)
        return self._levels[k]

    def _observe(self) -> dict[str, Any]:
        grid, carry = encode_observation(self.level)
        return {"grid": grid, "carry": carry, "mission": self.level.unwrapped.mission}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        k = (options or {}).get("num_subtasks", self.num_subtasks)
        self._check_k(k, "options['num_subtasks']")
        from rgvlm.envs import reset_quietly

        self.level = self._level(int(k))
        _, info = reset_quietly(self.level, seed)
        return self._observe(), info

    def step(self, action):
        if self.level is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action={action!r}: expected an integer in 0..{NUM_ACTIONS - 1}")
        _, reward, terminated, truncated, info = self.level.step(int(action))
        return self._observe(), float(reward), terminated, truncated, info

    def render(self):
        if self.level is None:
            raise RuntimeError("call reset() before render()")
        return render_frame(self.level, self.tile_size)

    def get_frame(self, *args, **kwargs) -> np.ndarray:
        """The current level's MiniGrid ``get_frame`` (what :func:`render_frame` calls)."""
        if self.level is None:
            raise RuntimeError("call reset() before get_frame()")
        return self.level.unwrapped.get_frame(*args, **kwargs)

    def close(self) -> None:
        for level in self._levels.values():
            level.close()
        self._levels.clear()
        self.level = None
