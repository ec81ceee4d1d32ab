"""Evaluation: vectorised rollouts on k = 1..6, seen and fresh layouts, and their summary."""

from rgvlm.evaluation.metrics import bootstrap_interval, summarize, summarize_overall
from rgvlm.evaluation.rollout import EvalEpisode, evaluate_policies, evaluate_runs, evaluation_episodes, rollout

__all__ = ["EvalEpisode", "bootstrap_interval", "evaluate_policies", "evaluate_runs", "evaluation_episodes", "rollout",
           "summarize", "summarize_overall"]
