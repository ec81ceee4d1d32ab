"""The expert: BabyAI's bot, taught to follow the suite's ordered, state-verified missions.

BabyAI's ``BabyAIBot`` plans a whole instruction tree once, at construction. Our
verification is state based (a sub-task whose effect already holds completes at once),
so the expert plans one sub-task at a time instead: whenever the environment's progress
moves on, the plan is replaced by the subgoals of the new current sub-task.

BabyAI's bot sees what the agent's 7x7 view has shown it so far and explores the rest, so
its actions depend on its memory of the episode. The learner here reads the *full* grid and
has no memory, so some of those actions cannot be predicted from its observation
(experiments/imitability.py: behaviour cloning fits 0.97 of this bot's k=1 expert actions,
0.997 of the state-view bot's, in ~50 epochs). ``state_view=True`` makes the bot's knowledge a
function of the current state, as the learner's is: at every step it knows every cell it can
reach without opening a door, and the walls and closed doors around them (a closed door hides
its room, and BabyAI's planner cannot path through one, so a whole-map mask would send it
after objects it cannot reach). It walks straight to what the sub-task names when it is in
reach, and opens the nearest door to look otherwise.
"""

from __future__ import annotations

import numpy as np
from minigrid.utils.baby_ai_bot import BabyAIBot

from rgvlm.envs.suite import OrderedInstr


class BotStuck(RuntimeError):
    """BabyAI's bot kept replanning without choosing an action (see :data:`MAX_SEARCHES_PER_STEP`)."""


#: Path searches one :meth:`SuiteBot.replan` may make. BabyAI's ``replan`` loops over its
#: subgoals until one suggests an action; carrying an object past a blocker, its subgoals can
#: push each other for ever (seen in a ``detour`` episode at k = 6). Counting searches, not
#: seconds, keeps the dataset a function of its parameters alone; an ordinary step makes a
#: handful. A stuck bot raises :class:`BotStuck`, which the collector treats as any other bot
#: failure (rebuild the bot, else a random step).
MAX_SEARCHES_PER_STEP = 1000


class SuiteBot(BabyAIBot):
    """A BabyAI bot for :class:`~rgvlm.envs.suite.OrderedSubtasksLevel` missions.

    Call :meth:`replan` once per step with the action actually taken (``None`` for the
    one the bot suggested), exactly as with ``BabyAIBot``.
    """

    def __init__(self, env, state_view: bool = False):
        instrs = env.unwrapped.instrs
        if not isinstance(instrs, OrderedInstr):
            raise TypeError(f"SuiteBot needs an OrderedInstr mission, got {type(instrs).__name__}")
        self._planned_for = instrs.progress
        self.state_view = bool(state_view)
        self._searches = 0  # path searches in the current replan (and in construction)
        super().__init__(env)
        if self.state_view:
            self._process_obs()

    def _process_obs(self):
        if not self.state_view:
            super()._process_obs()
            return
        # Flood fill from the agent through every cell but walls and closed doors (objects do
        # not hide what lies behind them); the cells that stop it are known too.
        grid = self.mission.unwrapped.grid
        known = np.zeros((grid.width, grid.height), dtype=bool)
        start = tuple(int(v) for v in self.mission.unwrapped.agent_pos)
        known[start] = True
        frontier = [start]
        while frontier:
            i, j = frontier.pop()
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                x, y = i + di, j + dj
                if not (0 <= x < grid.width and 0 <= y < grid.height) or known[x, y]:
                    continue
                known[x, y] = True
                cell = grid.get(x, y)
                if cell is None or not (cell.type == "wall" or (cell.type == "door" and not cell.is_open)):
                    frontier.append((x, y))
        self.vis_mask = known

    def _process_instr(self, instr):
        if isinstance(instr, OrderedInstr):
            if instr.progress < len(instr.leaves):
                super()._process_instr(instr.leaves[instr.progress])
            return
        super()._process_instr(instr)

    def _breadth_first_search(self, *args, **kwargs):
        self._searches += 1
        if self._searches > MAX_SEARCHES_PER_STEP:
            raise BotStuck(f"{MAX_SEARCHES_PER_STEP} path searches in one replan")
        return super()._breadth_first_search(*args, **kwargs)

    def replan(self, action_taken=None):
        self._searches = 0
        instrs = self.mission.unwrapped.instrs
        if instrs.progress != self._planned_for:
            # The last action finished the sub-task the plan was for: start the next one.
            # The taken action belonged to the old plan, so the new one must not try to
            # undo it.
            self._planned_for = instrs.progress
            self.stack = []
            self._process_instr(instrs)
            action_taken = None
        return super().replan(action_taken)


class DecoyBot(SuiteBot):
    """The bot, competently pursuing a decoy sub-task (:func:`rgvlm.envs.suite.decoy_subtask`)
    in place of the mission's current one: the dataset's systematic, consequential mistake."""

    def __init__(self, env, decoy, state_view: bool = False):
        self.decoy = decoy
        super().__init__(env, state_view)

    def _process_instr(self, instr):
        if isinstance(instr, OrderedInstr):
            super()._process_instr(self.decoy)
            return
        super()._process_instr(instr)
