"""The observation API that VLM-CaR's generated reward programs receive (their only input).

A generated program is a function ``check(obs) -> bool`` over one :class:`Observation`: the
symbolic state of the suite's grid world (objects with their positions, door states, the
agent, what it carries). :data:`API_DOC` is the documentation of this API exactly as the
program prompt shows it to the LVLM; it is written once, here, next to the code it
documents, and ``prompts/vlm_car_program.txt`` includes it through its ``{api}`` field.

Why a symbolic API rather than pixels: VLM-CaR's programs check sub-task completion
"from an observation"; in MiniGrid the paper's programs read the symbolic state too. Here
it is exactly what the offline learner observes (``obs_grid`` + ``obs_carry``), so a
program can be run on every observation of the dataset without rendering anything.

Why plain data: programs are untrusted and run in a separate, sandboxed process
(:mod:`rgvlm.sandbox`). That process must not import numpy or the project, so this
module's top level is pure standard-library Python: the sandbox loads this very file by
path and rebuilds each :class:`Observation` from JSON-able lists (:meth:`Observation.to_data`
/ :meth:`Observation.from_data`). The converters from the dataset's arrays
(:func:`observation_data`, :func:`trajectory_data`) import numpy lazily and only ever run
in the trusted parent process.

"Next to" matches BabyAI's ``PutNextInstr`` (``minigrid/envs/babyai/core/verifier.py``,
``pos_next_to``): two cells are next to each other when they share a side (Manhattan
distance 1); diagonal neighbours are not.
"""

from __future__ import annotations

API_VERSION = 1

#: MiniGrid's colour indices (``minigrid.core.constants.COLOR_TO_IDX``), repeated here so
#: that this module needs no import inside the sandbox; a test checks they agree.
COLOUR_NAMES = ("red", "green", "blue", "purple", "yellow", "grey")
#: MiniGrid's object type indices (``OBJECT_TO_IDX``) of the things a program can see.
OBJECT_TYPES = {4: "door", 5: "key", 6: "ball", 7: "box", 8: "goal", 9: "lava"}
EMPTY_IDX, AGENT_IDX = 1, 10
#: MiniGrid's door states (``STATE_TO_IDX``).
DOOR_STATES = ("open", "closed", "locked")
#: Agent directions: 0 = facing right (+x), 1 = down (+y), 2 = left (-x), 3 = up (-y).
DIRECTIONS = ("right", "down", "left", "up")

API_DOC = """\
`obs` describes one moment of a top-down grid world (x grows to the right, y grows downwards;
cell (0, 0) is the top-left corner). It has:

- `obs.objects`: a list of dicts, one per object lying in the grid, each with keys
  "type" ("door", "key", "ball" or "box"), "colour" (also readable as "color": one of "red",
  "green", "blue", "purple", "yellow", "grey"), "x", "y" (integers), and "state" (for doors:
  "open", "closed" or "locked"; None for other objects). Walls and empty floor are not listed.
  Each (type, colour) pair occurs at most once. The object the agent carries is NOT in
  `obs.objects`: it is in `obs.carrying`. A door the agent stands in is listed (as open).
- `obs.agent`: a dict with keys "x", "y" and "direction" (0 = facing right, 1 = down,
  2 = left, 3 = up).
- `obs.carrying`: None when the agent's hands are empty, else a dict with keys "type" and
  "colour" (also "color").
- `obs.width`, `obs.height`: the size of the grid in cells.

Helper methods (all return plain values and never raise on a missing object):

- `obs.find(type, colour)`: the object dict with that type and colour lying in the grid, or
  None (None also when the agent carries it).
- `obs.find_all(type=None, colour=None)`: a list of the object dicts lying in the grid that
  match the given type and/or colour (None matches anything).
- `obs.door(colour)`: the door dict of that colour, or None.
- `obs.is_open(colour)`: True when the door of that colour exists and is open.
- `obs.adjacent(a, b)`: True when a and b are next to each other: their cells share a side
  (|dx| + |dy| == 1; diagonal cells are NOT next to each other). a and b are object dicts
  (or the agent dict, or (x, y) pairs); False when either is None.
- `obs.carrying_is(type, colour)`: True when the agent carries the object of that type and
  colour.
"""


def _pos(item):
    """(x, y) of an object dict, the agent dict or an (x, y) pair; None for None."""
    if item is None:
        return None
    if isinstance(item, dict):
        return (item["x"], item["y"])
    x, y = item
    return (x, y)


def _object(type_, colour, x, y, state):
    return {"type": type_, "colour": colour, "color": colour, "x": x, "y": y, "state": state}


class Observation:
    """One observation, as generated programs see it (documented in :data:`API_DOC`)."""

    def __init__(self, objects, agent, carrying, width, height):
        self.objects = objects
        self.agent = agent
        self.carrying = carrying
        self.width = width
        self.height = height

    # -- plain data, the form in which observations cross the process boundary ---------
    @classmethod
    def from_data(cls, data):
        """Rebuild from ``[objects, agent, carrying, size]`` (see :func:`observation_data`)."""
        objects, agent, carrying, size = data
        return cls(
            objects=[_object(t, c, x, y, s) for t, c, x, y, s in objects],
            agent={"x": agent[0], "y": agent[1], "direction": agent[2]},
            carrying=None if carrying is None else {"type": carrying[0], "colour": carrying[1], "color": carrying[1]},
            width=size[0],
            height=size[1],
        )

    def to_data(self):
        """The plain, JSON-able form: nested tuples of str / int / None (hashable too)."""
        objects = tuple((o["type"], o["colour"], o["x"], o["y"], o["state"]) for o in self.objects)
        agent = (self.agent["x"], self.agent["y"], self.agent["direction"])
        carrying = None if self.carrying is None else (self.carrying["type"], self.carrying["colour"])
        return (objects, agent, carrying, (self.width, self.height))

    # -- helpers ------------------------------------------------------------------------
    def find(self, type, colour):
        for o in self.objects:
            if o["type"] == type and o["colour"] == colour:
                return o
        return None

    def find_all(self, type=None, colour=None):
        return [o for o in self.objects
                if (type is None or o["type"] == type) and (colour is None or o["colour"] == colour)]

    def door(self, colour):
        return self.find("door", colour)

    def is_open(self, colour):
        door = self.door(colour)
        return door is not None and door["state"] == "open"

    def adjacent(self, a, b):
        pa, pb = _pos(a), _pos(b)
        if pa is None or pb is None:
            return False
        return abs(pa[0] - pb[0]) + abs(pa[1] - pb[1]) == 1

    def carrying_is(self, type, colour):
        return self.carrying is not None and self.carrying["type"] == type and self.carrying["colour"] == colour

    def __repr__(self):
        return (f"Observation(agent={self.agent}, carrying={self.carrying}, "
                f"objects={[(o['type'], o['colour'], o['x'], o['y'], o['state']) for o in self.objects]})")


# -- converters from the dataset's arrays (trusted parent process only) ------------------
def observation_data(grid, carry, doors=None):
    """Plain data of one observation from MiniGrid's encoding.

    ``grid`` uint8 [H, W, 3] indexed [y, x] (type, colour, state; the agent's cell holds
    (agent, red, direction)), ``carry`` uint8 [2] (type, colour; (empty, 0) for nothing).
    ``doors`` maps (x, y) -> colour of the doors of this layout: the agent's own cell hides
    what is under it, and the agent can stand only in an *open* doorway, so a door under
    the agent is listed as open instead of vanishing (see :func:`trajectory_data`).
    """
    import numpy as np

    grid = np.asarray(grid)
    types = grid[..., 0]
    ys, xs = np.nonzero(np.isin(types, list(OBJECT_TYPES)))
    objects = []
    for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
        type_ = OBJECT_TYPES[int(types[y, x])]
        state = DOOR_STATES[int(grid[y, x, 2])] if type_ == "door" else None
        objects.append((type_, COLOUR_NAMES[int(grid[y, x, 1])], x, y, state))
    ay, ax = (int(v[0]) for v in np.nonzero(types == AGENT_IDX))
    agent = (ax, ay, int(grid[ay, ax, 2]))
    if doors and (ax, ay) in doors:
        objects.append(("door", doors[(ax, ay)], ax, ay, "open"))
        objects.sort(key=lambda o: (o[3], o[2]))  # row-major, as if the door were visible
    carrying = None
    if int(carry[0]) in OBJECT_TYPES:
        carrying = (OBJECT_TYPES[int(carry[0])], COLOUR_NAMES[int(carry[1])])
    height, width = types.shape
    return (tuple(objects), agent, carrying, (width, height))


def door_cells(grids):
    """(x, y) -> colour of every door seen in any of ``grids`` [T, H, W, 3] (doors never move)."""
    import numpy as np

    grids = np.asarray(grids)
    door_type = next(k for k, v in OBJECT_TYPES.items() if v == "door")
    seen = np.any(grids[..., 0] == door_type, axis=0)
    cells = {}
    for y, x in zip(*np.nonzero(seen), strict=True):
        column = grids[:, y, x]
        colour = column[column[:, 0] == door_type][0, 1]
        cells[(int(x), int(y))] = COLOUR_NAMES[int(colour)]
    return cells


def trajectory_data(grids, carries):
    """Plain data of every observation of one trajectory (same layout throughout).

    The doors' cells are read from the whole trajectory, so that an observation in which
    the agent stands in a doorway still lists that (necessarily open) door. This uses only
    what the learner observes, never privileged information.
    """
    doors = door_cells(grids)
    return [observation_data(g, c, doors) for g, c in zip(grids, carries, strict=True)]
