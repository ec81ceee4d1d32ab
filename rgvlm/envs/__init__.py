"""The benchmark suite: long-horizon BabyAI missions, registered with Gymnasium.

Importing this package registers ``RGVLM/Ordered-k{k}-v0`` for k = 1..6 and ``RGVLM/Ordered-v0``
(all of them, as the learner observes them: :mod:`rgvlm.envs.learner`).
"""

from __future__ import annotations

import contextlib
import io
import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import gymnasium as gym  # noqa: E402

from rgvlm.envs.bot import SuiteBot  # noqa: E402
from rgvlm.envs.suite import (  # noqa: E402
    ACTION_NAMES,
    CLAUSE_VOCABULARY,
    MAX_CLAUSE_WORDS,
    MAX_SUBTASKS,
    MIN_SUBTASKS,
    NUM_ACTIONS,
    SUBTASK_SEPARATOR,
    OrderedSubtasksLevel,
    encode_observation,
    grid_shape,
    render_frame,
)

ENV_ID_TEMPLATE = "RGVLM/Ordered-k{k}-v0"
SUITE_ENV_IDS = tuple(ENV_ID_TEMPLATE.format(k=k) for k in range(MIN_SUBTASKS, MAX_SUBTASKS + 1))
#: Every level behind one id, observed as the learner observes it (rgvlm.envs.learner): the
#: environment a Minari export of the dataset names, so recover_environment() gives it back.
LEARNER_ENV_ID = "RGVLM/Ordered-v0"


def env_id_for(num_subtasks: int) -> str:
    """The registered id of the suite's task with ``num_subtasks`` sub-tasks."""
    if not MIN_SUBTASKS <= num_subtasks <= MAX_SUBTASKS:
        raise ValueError(
            f"num_subtasks={num_subtasks!r}: expected {MIN_SUBTASKS}..{MAX_SUBTASKS}"
        )
    return ENV_ID_TEMPLATE.format(k=num_subtasks)


def register_suite() -> None:
    """Register every task of the suite, and the learner's view of them all, with Gymnasium (idempotent)."""
    for k, env_id in zip(range(MIN_SUBTASKS, MAX_SUBTASKS + 1), SUITE_ENV_IDS, strict=True):
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="rgvlm.envs.suite:OrderedSubtasksLevel",
                kwargs={"num_subtasks": k},
            )
    if LEARNER_ENV_ID not in gym.registry:
        # The entry point is recorded in the environment spec of every Minari export of the dataset
        # (make export-minari, relabelled copies), and recover_environment() imports it by this path:
        # moving or renaming rgvlm/envs/learner.py would break the datasets exported before.
        gym.register(id=LEARNER_ENV_ID, entry_point="rgvlm.envs.learner:LearnerEnv")


def make_env(env_id: str, **kwargs) -> gym.Env:
    """Make a suite task by id; ``kwargs`` override the level's construction arguments."""
    if env_id not in SUITE_ENV_IDS:
        raise ValueError(f"env_id={env_id!r}: expected one of {', '.join(SUITE_ENV_IDS)}")
    return gym.make(env_id, disable_env_checker=True, **kwargs)


def reset_quietly(env: gym.Env, seed: int):
    """``env.reset(seed=...)`` without BabyAI's "Sampling rejected" prints on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return env.reset(seed=seed)


register_suite()

__all__ = [
    "ACTION_NAMES",
    "CLAUSE_VOCABULARY",
    "LEARNER_ENV_ID",
    "MAX_CLAUSE_WORDS",
    "MAX_SUBTASKS",
    "MIN_SUBTASKS",
    "NUM_ACTIONS",
    "SUBTASK_SEPARATOR",
    "SUITE_ENV_IDS",
    "OrderedSubtasksLevel",
    "SuiteBot",
    "encode_observation",
    "env_id_for",
    "grid_shape",
    "make_env",
    "register_suite",
    "render_frame",
    "reset_quietly",
]
