"""Evaluation: vectorised rollouts on k = 1..6, seen and fresh layouts, and their summary."""

from rgvlm.evaluation.metrics import bootstrap_interval, summarize, summarize_overall
from rgvlm.evaluation.paired import (
    decide,
    paired_differences,
    per_layout_table,
    records_from_per_layout,
    summarize_cells,
)
from rgvlm.evaluation.rollout import EvalEpisode, evaluate_policies, evaluate_runs, evaluation_episodes, rollout

__all__ = ["EvalEpisode", "bootstrap_interval", "decide", "evaluate_policies", "evaluate_runs", "evaluation_episodes",
           "paired_differences", "per_layout_table", "records_from_per_layout", "rollout", "summarize", "summarize_cells",
           "summarize_overall"]
