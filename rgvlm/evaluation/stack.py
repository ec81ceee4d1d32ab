"""Rolling a trained :class:`rgvlm.rl.training.Stack` out while it is in memory: the evaluation half
of the training-and-evaluation API (the experiments evaluate between updates; the pipeline's
``evaluate`` stage loads the exported runs instead, :func:`rgvlm.rl.runs.load_stacked_policy`).

It lives here, not in :mod:`rgvlm.rl.training`, so that the ``train`` stage, which imports the
training half, does not depend on the evaluation code: a change to the rollouts must not retrain.
"""

from __future__ import annotations

from collections.abc import Mapping

from rgvlm.evaluation.rollout import EvalEpisode, rollout
from rgvlm.params import EnvConfig
from rgvlm.rl.missions import mission_embedder
from rgvlm.rl.training import Stack


def evaluate_stack(stack: Stack, episodes: list[EvalEpisode], env_config: EnvConfig,
                   temperatures: Mapping[str, float] | None = None, seed: int = 0, record_actions: bool = False,
                   tags: Mapping | None = None) -> list[dict]:
    """Every run of ``stack`` rolled out on ``episodes`` under each policy of ``temperatures``
    (record name -> temperature; 0 is greedy, a sampled policy draws from a generator seeded by
    ``seed``; default greedy only), all runs at once, reading missions as the networks do
    (``mission_encoder``, ``mission_view``). One record per (policy, run, episode), as
    :func:`rollout` writes it plus ``reward_set``, ``run_seed``, ``policy`` and ``tags``."""
    temperatures = {"greedy": 0.0} if temperatures is None else temperatures
    embedder = mission_embedder(stack.config.mission_encoder)
    records = []
    for name, temperature in temperatures.items():
        per_run = rollout(stack.policy(temperature, seed), episodes, env_config, embedder.embed,
                          num_runs=len(stack.runs), record_actions=record_actions,
                          mission_view=stack.config.mission_view)
        for (reward_set, run_seed), run_records in zip(stack.runs, per_run, strict=True):
            records += [{**r, "reward_set": reward_set, "run_seed": run_seed, "policy": name, **(tags or {})}
                        for r in run_records]
    return records
