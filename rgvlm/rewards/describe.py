"""Plain-English descriptions of a symbolic observation, for the text-embedding reward.

The embedding reward (:mod:`rgvlm.methods.embedding`) compares a state with the mission in
a sentence encoder's space. Its default path has no image model (none can be downloaded
here), so the state is first *written out* in the mission's own vocabulary, then embedded
with the same all-MiniLM-L6-v2 that embeds the mission. This module writes that text.

What a description says, always in this order (so equal observations give equal text):

1. every visible door and whether it is open or closed (colour order red, green, blue,
   purple, yellow, grey): "The red door is open. The blue door is closed.";
2. every pair of objects that are next to each other, in BabyAI's sense
   (``minigrid.envs.babyai.core.verifier.pos_next_to``: horizontally or vertically adjacent,
   not diagonally): "The green ball is next to the yellow key." -- the phrase a
   "put the green ball next to the yellow key" sub-task asks for;
3. the agent: its room (or that it stands in a doorway), the door or object right in
   front of it, and what it carries: "The agent is in the top-left room. The agent faces
   the red door. The agent carries the blue key."

Each of these sentences is a *fact* (:func:`observation_facts`); the description is the
facts joined. Facts are few (about 100 distinct ones over the full dataset) where whole
descriptions are many (about 27k), which is what lets the embedding reward run on a CPU.

Everything is read from the observation the learner sees (``obs_grid`` + ``obs_carry``),
never from the mission, the sub-tasks or the privileged progress: the same observation
always gives the same text. Two facts the grid cannot show are left out rather than
guessed: the door under the agent (the agent's cell hides it) and the agent's heading
when nothing is in front of it (it would multiply the distinct descriptions by four for
no goal-relevant information).
"""

from __future__ import annotations

import numpy as np
from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT, OBJECT_TO_IDX, STATE_TO_IDX

from rgvlm.envs.suite import NUM_ROOM_COLS, NUM_ROOM_ROWS

DOOR = OBJECT_TO_IDX["door"]
AGENT = OBJECT_TO_IDX["agent"]
EMPTY = OBJECT_TO_IDX["empty"]
#: Objects that can be picked up and placed next to others (BabyAI's movable objects).
MOVABLE = tuple(OBJECT_TO_IDX[name] for name in ("key", "ball", "box"))
#: MiniGrid's DIR_TO_VEC as (dy, dx) for the row-major grid: 0 east, 1 south, 2 west, 3 north.
DIRECTION_STEP = ((0, 1), (1, 0), (0, -1), (-1, 0))
ROW_NAMES = ("top", "bottom")
COL_NAMES = ("left", "right")


def object_name(type_idx: int, color_idx: int) -> str:
    """BabyAI's surface form of an object: "the green ball"."""
    return f"the {IDX_TO_COLOR[int(color_idx)]} {IDX_TO_OBJECT[int(type_idx)]}"


def room_name(y: int, x: int, height: int, width: int) -> str | None:
    """"the top-left room" for an interior cell of the 2x2 layout; None on a wall line (a doorway)."""
    step_y, step_x = (height - 1) // NUM_ROOM_ROWS, (width - 1) // NUM_ROOM_COLS
    if y % step_y == 0 or x % step_x == 0:
        return None
    return f"the {ROW_NAMES[min(y // step_y, NUM_ROOM_ROWS - 1)]}-{COL_NAMES[min(x // step_x, NUM_ROOM_COLS - 1)]} room"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def observation_facts(grid: np.ndarray, carry: np.ndarray) -> list[str]:
    """The description of one observation as a list of short sentences ("facts"), in a fixed order.

    ``grid`` is uint8 [H, W, 3] (row-major; object type, colour, state; the agent's cell holds
    (agent, red, direction)), ``carry`` uint8 [2] (object type, colour; type ``empty`` when the
    hands are empty), as stored in ``obs_grid`` / ``obs_carry``. Facts are what the embedding
    reward embeds (each distinct one once): ~100 distinct facts cover the full dataset,
    against ~27k distinct whole descriptions.
    """
    grid = np.asarray(grid)
    types, colors, states = grid[..., 0], grid[..., 1], grid[..., 2]
    height, width = types.shape
    facts = []

    # 1. doors, in colour order (a canonical order: the text does not depend on the layout).
    door_cells = sorted(zip(*np.nonzero(types == DOOR), strict=True), key=lambda p: (int(colors[p]), p))
    for y, x in door_cells:
        state = "open" if int(states[y, x]) == STATE_TO_IDX["open"] else "closed"
        facts.append(_sentence(f"{object_name(DOOR, colors[y, x])} is {state}"))

    # 2. pairs of movable objects next to each other (Manhattan distance 1), in name order.
    objects = sorted(
        (IDX_TO_OBJECT[int(types[y, x])], int(colors[y, x]), int(y), int(x))
        for y, x in zip(*np.nonzero(np.isin(types, MOVABLE)), strict=True)
    )
    for i, (type_a, color_a, ya, xa) in enumerate(objects):
        for type_b, color_b, yb, xb in objects[i + 1:]:
            if abs(ya - yb) + abs(xa - xb) == 1:
                a = object_name(OBJECT_TO_IDX[type_a], color_a)
                b = object_name(OBJECT_TO_IDX[type_b], color_b)
                facts.append(_sentence(f"{a} is next to {b}"))

    # 3. the agent: where, what is in front of it, what it carries.
    agent = np.argwhere(types == AGENT)
    if len(agent):
        ay, ax = (int(v) for v in agent[0])
        room = room_name(ay, ax, height, width)
        facts.append(_sentence(f"the agent is in {room}" if room else "the agent stands in a doorway"))
        dy, dx = DIRECTION_STEP[int(states[ay, ax]) % 4]
        fy, fx = ay + dy, ax + dx
        if 0 <= fy < height and 0 <= fx < width and (int(types[fy, fx]) == DOOR or int(types[fy, fx]) in MOVABLE):
            facts.append(_sentence(f"the agent faces {object_name(types[fy, fx], colors[fy, fx])}"))
        carried = "nothing" if int(carry[0]) in (EMPTY, 0) else object_name(carry[0], carry[1])
        facts.append(_sentence(f"the agent carries {carried}"))
    return facts


def describe_observation(grid: np.ndarray, carry: np.ndarray) -> str:
    """A deterministic English description of one observation: its facts, joined
    (see :func:`observation_facts` for the arguments)."""
    return " ".join(observation_facts(grid, carry))
