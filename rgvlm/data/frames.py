"""Where the frames an LVLM sees come from, for a dataset that is not the suite's ``data/``.

A frame source answers ``frames(episode, times, tile_size)``: uint8 [len(times), h, w, 3], the
RGB frames of observations ``times`` (sorted; 0 is the reset observation) of one episode.

- :class:`EnvReplay`: the observations are not images (symbolic grids, state vectors), so the
  episode is replayed in its environment (``reset(seed, options)``, then the stored actions) and
  rendered. Replay is only trusted while it reproduces the stored observations: it stops with
  :class:`ReplayDiverged` at the first step that differs (a non-deterministic environment, a
  wrong seed or options), rather than label frames of some other trajectory.
- :class:`StoredFrames`: the frames are kept with the data (image observations, or image files
  beside the trajectories, as ALFRED ships them); ``load(episode, times)`` reads them.

The suite's own dataset renders its frames by replay too (:mod:`rgvlm.data.replay`), with the
level it was built with; :func:`rgvlm.rewards.queries.episode_pngs` picks the source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class FrameSource(Protocol):
    def frames(self, episode: int, times: Sequence[int], tile_size: int) -> np.ndarray: ...


class ReplayDiverged(RuntimeError):
    """Replaying an episode did not reproduce its stored observations."""


def same_observation(a: Any, b: Any) -> bool:
    """Whether two observations (arrays, strings, numbers, or dicts / tuples / lists of them) are equal."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            same_observation(a[k], b[k]) for k in a)
    if isinstance(a, str | bytes) or isinstance(b, str | bytes):
        return a == b
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(same_observation(x, y) for x, y in zip(a, b, strict=True))
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def observation_at(observations: Any, t: int) -> Any:
    """Observation ``t`` of an episode's stored observations, as Minari returns them (an array or
    list over time, or a dict / tuple of such)."""
    if isinstance(observations, dict):
        return {k: observation_at(v, t) for k, v in observations.items()}
    if isinstance(observations, tuple):
        return tuple(observation_at(v, t) for v in observations)
    return observations[t]


def render_rgb(env: Any, tile_size: int) -> np.ndarray:
    """An RGB frame of ``env``'s current state. MiniGrid levels (and the suite's learner view) are
    drawn whole, unhighlighted, at ``tile_size`` pixels a cell, as the suite's frames are;
    any other environment through ``render()`` (made with ``render_mode="rgb_array"``)."""
    if hasattr(env.unwrapped, "get_frame"):
        from rgvlm.envs import render_frame

        return render_frame(env, tile_size)
    frame = env.render()
    if frame is None:
        raise ValueError(f"{env.spec.id if env.spec else type(env.unwrapped).__name__}: render() returned nothing; "
                         "the environment must support render_mode='rgb_array'")
    return np.asarray(frame, dtype=np.uint8)


@dataclass
class ReplayEpisode:
    """How to replay one episode: its reset seed and options and its actions."""

    seed: int
    options: dict[str, Any] | None
    actions: np.ndarray


@dataclass
class EnvReplay:
    """Frames rendered by replaying each episode in ``make_env()`` (made once, on first use).

    ``stored(episode)`` returns the episode's stored observations, checked step by step against
    the replay (None skips the check)."""

    make_env: Callable[[], Any]
    episodes: Sequence[ReplayEpisode]
    stored: Callable[[int], Any] | None = None
    _env: Any = field(default=None, init=False, repr=False)

    @property
    def env(self) -> Any:
        if self._env is None:
            self._env = self.make_env()
        return self._env

    def frames(self, episode: int, times: Sequence[int], tile_size: int) -> np.ndarray:
        spec = self.episodes[episode]
        wanted = sorted(set(int(t) for t in times))
        if wanted and not 0 <= wanted[0] <= wanted[-1] <= len(spec.actions):
            raise ValueError(f"episode {episode}: frames {wanted[0]}..{wanted[-1]} asked, it has 0..{len(spec.actions)}")
        stored = self.stored(episode) if self.stored is not None else None
        env = self.env
        observation, _ = env.reset(seed=spec.seed, options=spec.options)
        out = []
        for t in range(wanted[-1] + 1 if wanted else 0):
            if stored is not None and not same_observation(observation, observation_at(stored, t)):
                raise ReplayDiverged(
                    f"episode {episode}: replaying it (seed {spec.seed}, options {spec.options}) gives another "
                    f"observation than the stored one at step {t}: the environment is not deterministic in "
                    "(seed, options, actions), or they were not recorded as used. Use stored image observations "
                    "(--frames observation) for such a dataset.")
            if t in wanted:
                out.append(render_rgb(env, tile_size))
            if t < wanted[-1]:
                observation, *_ = env.step(spec.actions[t].item())
        return np.stack(out) if out else np.zeros((0, 0, 0, 3), dtype=np.uint8)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


@dataclass(frozen=True)
class StoredFrames:
    """Frames kept with the data: ``load(episode, times)`` returns uint8 [len(times), h, w, 3]."""

    load: Callable[[int, list[int]], np.ndarray]

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> StoredFrames:
        """Frames held in memory, one array [T + 1, h, w, 3] per episode."""
        return cls(lambda episode, times: np.asarray(arrays[episode])[times])

    def frames(self, episode: int, times: Sequence[int], tile_size: int) -> np.ndarray:
        frames = np.asarray(self.load(episode, sorted(int(t) for t in times)))
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) != len(times):
            raise ValueError(f"episode {episode}: stored frames of dtype {frames.dtype} and shape {frames.shape}, "
                             f"expected uint8 [{len(times)}, height, width, 3]")
        return frames
