"""The expert: BabyAI's bot, taught to follow the suite's ordered, state-verified missions.

BabyAI's ``BabyAIBot`` plans a whole instruction tree once, at construction. Our
verification is state based (a sub-task whose effect already holds completes at once),
so the expert plans one sub-task at a time instead: whenever the environment's progress
moves on, the plan is replaced by the subgoals of the new current sub-task.
"""

from __future__ import annotations

from minigrid.utils.baby_ai_bot import BabyAIBot

from rgvlm.envs.suite import OrderedInstr


class SuiteBot(BabyAIBot):
    """A BabyAI bot for :class:`~rgvlm.envs.suite.OrderedSubtasksLevel` missions.

    Call :meth:`replan` once per step with the action actually taken (``None`` for the
    one the bot suggested), exactly as with ``BabyAIBot``.
    """

    def __init__(self, env):
        instrs = env.unwrapped.instrs
        if not isinstance(instrs, OrderedInstr):
            raise TypeError(f"SuiteBot needs an OrderedInstr mission, got {type(instrs).__name__}")
        self._planned_for = instrs.progress
        super().__init__(env)

    def _process_instr(self, instr):
        if isinstance(instr, OrderedInstr):
            if instr.progress < len(instr.leaves):
                super()._process_instr(instr.leaves[instr.progress])
            return
        super()._process_instr(instr)

    def replan(self, action_taken=None):
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
