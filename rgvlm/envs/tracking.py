"""Which sub-tasks are done, tracked by the learner from what it observes.

The suite's verifier (``OrderedInstr``) is ordered and latched: sub-task i completes at the first
step at which its effect holds once 0..i-1 are done, and stays done when the effect is undone
later. A single state therefore does not say how far a mission has come: the bot often moves a
placed object out of its way for a later sub-task, and in the CPU profile's dataset the first
clause whose effect does not hold in the current state lags the true progress at 29% of the k = 6
steps (``reports/tuning/chaining_tracking.json``). What does say it is the observation *history*,
read by the same rule the verifier applies, one observation at a time:
:func:`observed_progress` advances a count while the next clause's effect holds in the grid.

Everything here reads the learner's own observation -- the symbolic grid, the carried object and
the mission's words -- never the level's privileged progress. It can lag the verifier by a few
steps where the grid hides an effect (the agent standing in an open doorway covers the door's
cell), and then catches up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

from rgvlm.envs.suite import SUBTASK_SEPARATOR

DOOR = OBJECT_TO_IDX["door"]
OPEN = STATE_TO_IDX["open"]


@dataclass(frozen=True)
class Clause:
    """One sub-task as its words state it: open the (colour) door, or put (type, colour) next to (type, colour)."""

    verb: str  # "open" | "put"
    target: tuple[int, int]  # (object type, colour) of the door to open or the object to move
    fixed: tuple[int, int] | None = None  # (object type, colour) to put it next to


def parse_clause(text: str) -> Clause:
    """``"open the red door"`` or ``"put the blue ball next to the grey key"`` -> :class:`Clause`."""
    words = text.replace(",", " ").split()
    try:
        if len(words) == 4 and words[0] == "open" and words[3] == "door":
            return Clause("open", (DOOR, COLOR_TO_IDX[words[2]]))
        if len(words) == 9 and words[0] == "put" and words[4:6] == ["next", "to"]:
            return Clause("put", (OBJECT_TO_IDX[words[3]], COLOR_TO_IDX[words[2]]),
                          (OBJECT_TO_IDX[words[8]], COLOR_TO_IDX[words[7]]))
    except KeyError as error:
        raise ValueError(f"clause {text!r}: unknown object or colour {error}") from None
    raise ValueError(f"clause {text!r}: expected 'open the <colour> door' or "
                     f"'put the <colour> <type> next to the <colour> <type>'")


def parse_mission(mission: str) -> tuple[Clause, ...]:
    """The mission's clauses, in order."""
    return tuple(parse_clause(part.strip()) for part in mission.split(SUBTASK_SEPARATOR))


def clause_holds(clause: Clause, grid: np.ndarray) -> bool:
    """Whether the clause's effect shows in the symbolic grid ``[H, W, 3]`` (type, colour, state):
    the named door is open, or the named object lies in a cell 4-adjacent to the other named
    object (BabyAI's ``pos_next_to``; a carried object is not in the grid, so it is not placed)."""
    types, colours = grid[..., 0], grid[..., 1]
    where = (types == clause.target[0]) & (colours == clause.target[1])
    if clause.verb == "open":
        return bool((where & (grid[..., 2] == OPEN)).any())
    moved = np.argwhere(where)
    fixed = np.argwhere((types == clause.fixed[0]) & (colours == clause.fixed[1]))
    if not len(moved) or not len(fixed):
        return False
    return bool((np.abs(moved[:, None, :] - fixed[None, :, :]).sum(-1) == 1).any())


def observed_progress(clauses: tuple[Clause, ...], grid: np.ndarray, done: int) -> int:
    """The count of leading clauses done after observing ``grid``, given ``done`` before it:
    the verifier's ordered, latched rule applied to what the learner sees."""
    while done < len(clauses) and clause_holds(clauses[done], grid):
        done += 1
    return done


def remaining_mission(mission: str, done: int) -> str:
    """The clauses of ``mission`` not yet done, in order (the whole mission when none is; the
    last clause when all are: an episode ends there, and a mission is never empty)."""
    parts = mission.split(SUBTASK_SEPARATOR)
    return SUBTASK_SEPARATOR.join(parts[min(done, len(parts) - 1):])


def track_episode(mission: str, grids: np.ndarray) -> np.ndarray:
    """int ``[T]``: the observed progress after each of an episode's observations ``[T, H, W, 3]``."""
    clauses = parse_mission(mission)
    out = np.empty(len(grids), dtype=np.int64)
    done = 0
    for t, grid in enumerate(grids):
        done = observed_progress(clauses, grid, done)
        out[t] = done
    return out
