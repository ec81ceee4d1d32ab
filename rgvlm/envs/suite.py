"""The long-horizon BabyAI suite: missions of k = 1..6 ordered, state-changing sub-tasks.

This is the embedded stand-in for ALFRED (see DESIGN.md section 3). Each layout is a 2x2
grid of rooms joined by four closed doors of distinct colours, with a few balls and keys
of distinct (type, colour). A mission is k sub-tasks in BabyAI's own language, joined
by ", then ":

    "open the red door, then put the green ball next to the yellow key, then ..."

Why only "open" and "put next to": the learner sees the fully observed symbolic grid
(:func:`encode_observation`), and the effect of these two sub-task types persists in it
(a door stays open, a placed object stays next to its target). Which sub-tasks are done
is therefore readable from the current observation, so IQL can work on single states;
"go to" and a lone "pick up" leave no trace and would need a history encoder.

Verification is ordered and state based: sub-task i is checked only once sub-tasks
0..i-1 are done, and it completes at the first step at which its effect holds. If the
effect already holds when its turn comes (the expert opened that door on its way
earlier) it completes at once, possibly in the same step as its predecessor. Completion
is latched: undoing an effect later does not take the progress back.

Boxes are left out on purpose: toggling a box destroys it (and its mission), which the
epsilon-random actions of the noisy-expert data would do now and then.
"""

from __future__ import annotations

import numpy as np
from minigrid.core.constants import COLOR_NAMES, COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.envs.babyai.core.roomgrid_level import RejectSampling, RoomGridLevel
from minigrid.envs.babyai.core.verifier import (
    Instr,
    ObjDesc,
    OpenInstr,
    PutNextInstr,
    pos_next_to,
)

MIN_SUBTASKS = 1
MAX_SUBTASKS = 6
SUBTASK_SEPARATOR = ", then "
OBJECT_TYPES = ("ball", "key")
NUM_ROOM_ROWS = 2
NUM_ROOM_COLS = 2
#: The learner's actions: MiniGrid's left, right, forward, pickup, drop, toggle.
#: MiniGrid's "done" (6) is a no-op here and is left out of the action space.
NUM_ACTIONS = 6
ACTION_NAMES = ("turn left", "turn right", "move forward", "pick up", "drop", "toggle")
# Every word the suite's clauses use ("open the red door", "put the blue ball next to the red
# key"), plus BabyAI's other verbs and objects so that a neighbouring level's missions encode too:
# the vocabulary of the clause word codes (rgvlm.rl.missions.ClauseTokenEmbedder).
CLAUSE_VOCABULARY = ("put", "the", "next", "to", "open", "pick", "up", "go", "a", "door", "ball", "key", "box",
                     *COLOR_NAMES)
MAX_CLAUSE_WORDS = 10


class OrderedInstr(Instr):
    """An ordered list of BabyAI action instructions, verified one after the other.

    ``progress`` counts the leading sub-tasks already done; ``completed_last_step`` how
    many of them the last step completed (0, 1, or more when effects were already there).
    """

    def __init__(self, leaves: list[OpenInstr | PutNextInstr]):
        super().__init__()
        if not MIN_SUBTASKS <= len(leaves) <= MAX_SUBTASKS:
            raise ValueError(
                f"an ordered mission needs {MIN_SUBTASKS}..{MAX_SUBTASKS} sub-tasks, "
                f"got {len(leaves)}"
            )
        self.leaves = list(leaves)
        self.progress = 0
        self.completed_last_step = 0

    def surface(self, env) -> str:
        return SUBTASK_SEPARATOR.join(leaf.surface(env) for leaf in self.leaves)

    def subtask_texts(self, env) -> list[str]:
        """The surface form of each sub-task, in order."""
        return [leaf.surface(env) for leaf in self.leaves]

    def reset_verifier(self, env) -> None:
        super().reset_verifier(env)
        for leaf in self.leaves:
            leaf.reset_verifier(env)
        self.progress = 0
        self.completed_last_step = 0

    def update_objs_poss(self) -> None:
        for leaf in self.leaves:
            leaf.update_objs_poss()

    def leaf_holds(self, leaf: OpenInstr | PutNextInstr) -> bool:
        """Whether the effect a sub-task asks for holds in the current state."""
        env = self.env.unwrapped
        if isinstance(leaf, OpenInstr):
            return any(door.is_open for door in leaf.desc.obj_set)
        moved = [obj for obj in leaf.desc_move.obj_set if obj is not env.carrying]
        return any(
            obj.cur_pos is not None
            and tuple(obj.cur_pos) != (-1, -1)
            and pos_next_to(obj.cur_pos, fixed.cur_pos)
            for obj in moved
            for fixed in leaf.desc_fixed.obj_set
        )

    def verify(self, action) -> str:
        before = self.progress
        while self.progress < len(self.leaves) and self.leaf_holds(self.leaves[self.progress]):
            self.progress += 1
        self.completed_last_step = self.progress - before
        return "success" if self.progress == len(self.leaves) else "continue"


class OrderedSubtasksLevel(RoomGridLevel):
    """A BabyAI level whose mission is ``num_subtasks`` ordered sub-tasks.

    Layouts, objects and the mission are all drawn from the reset seed, so a seed is a
    reproducible initial state and fresh seeds are the paper's randomised initial states.
    """

    def __init__(
        self,
        num_subtasks: int,
        room_size: int = 6,
        objs_per_room: int = 2,
        door_subtask_prob: float = 0.3,
        steps_per_subtask: int = 64,
        **kwargs,
    ):
        if not isinstance(num_subtasks, int) or not MIN_SUBTASKS <= num_subtasks <= MAX_SUBTASKS:
            raise ValueError(
                f"num_subtasks={num_subtasks!r}: expected an integer in "
                f"{MIN_SUBTASKS}..{MAX_SUBTASKS}"
            )
        num_objects = objs_per_room * NUM_ROOM_ROWS * NUM_ROOM_COLS
        if num_objects < num_subtasks + 1:
            raise ValueError(
                f"objs_per_room={objs_per_room}: {num_subtasks} sub-tasks need at least "
                f"{num_subtasks + 1} objects in the 4 rooms"
            )
        if num_objects > len(OBJECT_TYPES) * len(COLOR_NAMES):
            raise ValueError(
                f"objs_per_room={objs_per_room}: at most "
                f"{len(OBJECT_TYPES) * len(COLOR_NAMES) // 4} objects per room have a "
                "unique (type, colour)"
            )
        self.num_subtasks = num_subtasks
        self.objs_per_room = objs_per_room
        self.door_subtask_prob = door_subtask_prob
        super().__init__(
            room_size=room_size,
            num_rows=NUM_ROOM_ROWS,
            num_cols=NUM_ROOM_COLS,
            # One allowance per sub-task plus one for exploring: the bot sees only its 7x7 view.
            max_steps=steps_per_subtask * (num_subtasks + 1),
            **kwargs,
        )

    # -- generation -------------------------------------------------------------------
    def gen_mission(self) -> None:
        door_colors = self._rand_subset(COLOR_NAMES, 4)
        # Four doors make a ring through the four rooms: (0,0)-(1,0), (0,0)-(0,1),
        # (1,1)-(0,1), (1,1)-(1,0). Distinct colours make "the red door" unique.
        doors = [
            self.add_door(0, 0, 0, door_colors[0], locked=False)[0],
            self.add_door(0, 0, 1, door_colors[1], locked=False)[0],
            self.add_door(1, 1, 2, door_colors[2], locked=False)[0],
            self.add_door(1, 1, 3, door_colors[3], locked=False)[0],
        ]
        kinds = [(t, c) for t in OBJECT_TYPES for c in COLOR_NAMES]
        chosen = self._rand_subset(kinds, self.objs_per_room * NUM_ROOM_ROWS * NUM_ROOM_COLS)
        objects = []
        for index, (kind, color) in enumerate(chosen):
            room = index // self.objs_per_room
            obj, _ = self.add_object(room % NUM_ROOM_COLS, room // NUM_ROOM_COLS, kind, color)
            objects.append(obj)
        self.place_agent()
        self.check_objs_reachable()

        unused_doors = list(doors)
        movable = list(objects)
        self._rand_shuffle_in_place(movable)
        num_putnext = 0
        leaves: list[OpenInstr | PutNextInstr] = []
        for _ in range(self.num_subtasks):
            if unused_doors and self._rand_float(0, 1) < self.door_subtask_prob:
                door = unused_doors.pop(self._rand_int(0, len(unused_doors)))
                leaves.append(OpenInstr(ObjDesc("door", door.color)))
            else:
                num_putnext += 1
                leaves.append(None)  # filled below, once all moved objects are known
        moved = movable[:num_putnext]
        targets = movable[num_putnext:]
        moved_iter = iter(moved)
        for index, leaf in enumerate(leaves):
            if leaf is None:
                obj = next(moved_iter)
                target = self._rand_elem(targets)
                leaves[index] = PutNextInstr(
                    ObjDesc(obj.type, obj.color), ObjDesc(target.type, target.color)
                )
        self.instrs = OrderedInstr(leaves)

    def _rand_shuffle_in_place(self, items: list) -> None:
        order = self.np_random.permutation(len(items))
        items[:] = [items[i] for i in order]

    def validate_instrs(self, instr) -> None:
        if isinstance(instr, OrderedInstr):
            for leaf in instr.leaves:
                super().validate_instrs(leaf)
                if isinstance(leaf, OpenInstr):
                    leaf.reset_verifier(self)
                    if any(door.is_open for door in leaf.desc.obj_set):
                        raise RejectSampling("door to open is already open")
            return
        super().validate_instrs(instr)

    def num_navs_needed(self, instr) -> int:
        if isinstance(instr, OrderedInstr):
            return sum(self.num_navs_needed(leaf) for leaf in instr.leaves)
        return super().num_navs_needed(instr)

    def _reward(self) -> float:
        # Binary success: the sparse task reward of the paper. BabyAI's default discounts
        # by episode length, which would leak a shaping signal into "sparse".
        return 1.0

    # -- stepping ---------------------------------------------------------------------
    def reset(self, **kwargs):
        obs, info = super().reset(**kwargs)
        info.update(self.progress_info())
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info.update(self.progress_info())
        return obs, reward, terminated, truncated, info

    #: False skips MiniGrid's 7x7 egocentric observation on every step (about half the cost of
    #: a step); rollouts that read :func:`encode_observation` instead set it (evaluation).
    agent_view_obs: bool = True

    def gen_obs(self):
        if self.agent_view_obs:
            return super().gen_obs()
        return {"mission": self.mission, "direction": self.agent_dir}

    def progress_info(self) -> dict:
        """Privileged ground truth: never part of what a learner observes."""
        return {
            "progress": self.instrs.progress,
            "completed": self.instrs.completed_last_step,
            "num_subtasks": self.num_subtasks,
        }

    @property
    def subtasks(self) -> list[str]:
        return self.instrs.subtask_texts(self)


def decoy_subtask(env, rng: np.random.Generator) -> OpenInstr | PutNextInstr | None:
    """A plausible wrong version of the mission's current sub-task, for the dataset's ``decoy``
    episodes: the same verb with one object swapped for another of the layout (open another
    closed door; move another object next to the same target, or the same object next to
    another one), never a sub-task the mission asks for. Its effect does not hold yet; ``None`` when the layout allows none.
    Verified with :meth:`OrderedInstr.leaf_holds`, like a real sub-task."""
    u = env.unwrapped
    instrs = u.instrs
    real = instrs.leaves[instrs.progress]
    objects = [obj for row in u.room_grid for room in row for obj in room.objs]
    doors = {id(door): door for row in u.room_grid for room in row for door in room.doors if door is not None}
    candidates: list[OpenInstr | PutNextInstr] = []
    if isinstance(real, OpenInstr):
        candidates = [OpenInstr(ObjDesc("door", door.color)) for door in doors.values()
                      if not door.is_open and door.color != real.desc.color]
    else:
        move, fixed = (real.desc_move.type, real.desc_move.color), (real.desc_fixed.type, real.desc_fixed.color)
        others = [(obj.type, obj.color) for obj in objects if (obj.type, obj.color) not in (move, fixed)]
        pairs = [(other, fixed) for other in others] + [(move, other) for other in others]
        carried = (u.carrying.type, u.carrying.color) if u.carrying is not None else None
        candidates = [PutNextInstr(ObjDesc(*a), ObjDesc(*b)) for a, b in pairs if carried not in (a, b)]
    # A later sub-task done early is progress, not a mistake. Read from the mission string, not
    # re-described: describing a leaf re-finds its objects on the grid, which fails (and rebinds
    # the verifier) while the agent carries one of them.
    asked = set(u.mission.split(SUBTASK_SEPARATOR))
    viable = []
    for leaf in candidates:
        leaf.reset_verifier(u)
        if leaf.surface(u) not in asked and not instrs.leaf_holds(leaf):
            viable.append(leaf)
    if not viable:
        return None
    return viable[int(rng.integers(len(viable)))]


def grid_shape(room_size: int = 6) -> tuple[int, int]:
    """(height, width) of the symbolic grid for a 2x2 layout of ``room_size`` rooms."""
    return (
        (room_size - 1) * NUM_ROOM_ROWS + 1,
        (room_size - 1) * NUM_ROOM_COLS + 1,
    )


EMPTY_CARRY = (OBJECT_TO_IDX["empty"], 0)
EMPTY_CELL = (OBJECT_TO_IDX["empty"], 0, 0)


def encode_observation(env) -> tuple[np.ndarray, np.ndarray]:
    """The learner's observation: the full symbolic grid and what the agent carries.

    Returns ``grid`` uint8 [H, W, 3] (row-major: y, x; channels object type, colour,
    state; the agent's cell holds (agent, red, direction)) and ``carry`` uint8 [2]
    (object type, colour; (empty, 0) when the agent carries nothing).
    """
    u = env.unwrapped
    # Equal to u.grid.encode().transpose(1, 0, 2), several times faster: Grid.grid is a flat
    # row-major (y, x) list, so one pass over it needs no per-cell bounds checks.
    cells = [EMPTY_CELL if obj is None else obj.encode() for obj in u.grid.grid]
    grid = np.array(cells, dtype=np.uint8).reshape(u.grid.height, u.grid.width, 3)
    x, y = u.agent_pos
    grid[y, x] = (OBJECT_TO_IDX["agent"], COLOR_TO_IDX["red"], u.agent_dir)
    carry = (
        (OBJECT_TO_IDX[u.carrying.type], COLOR_TO_IDX[u.carrying.color])
        if u.carrying is not None
        else EMPTY_CARRY
    )
    return grid, np.asarray(carry, dtype=np.uint8)


def render_frame(env, tile_size: int = 16) -> np.ndarray:
    """A top-down RGB render of the whole layout (the LVLM's view), uint8 [H, W, 3]."""
    return env.unwrapped.get_frame(highlight=False, tile_size=tile_size, agent_pov=False)
