"""RG-VLM: per-transition rewards from a two-stage LVLM query (Lee et al., 2025).

Each episode is cut into windows of ``window_length`` transitions (``window_stride`` apart).
For a window the LVLM sees frames (every ``frame_stride``-th observation, plus the last),
the numbered actions and the mission, and is asked

1. (stage 1) for a free-text analysis of how the actions move the task forward, then
2. (stage 2) given that analysis and the same context, for one integer score 0..10 per
   action as JSON (``{"scores": [...]}``); stage 2 may use another, cheaper model.

A stage-2 answer that fails the parser is re-asked up to ``max_reasks`` times with the
reason appended to the prompt; after that the window's scores fall back to
``fallback_score`` and the event is counted (a stage whose fallbacks pass
``labelling.max_failure_rate`` fails: :func:`~rgvlm.rewards.base.check_failure_rate`).
These settings are the ``rg_vlm`` section of params.yaml; the LVLM is the shared ``labelling`` one.
Overlapping windows are averaged per transition; reward = score / 10. With ``scoring:
token_probs`` in the LVLM section (:mod:`rgvlm.vlm.token_probs`) each action's score is read from
the model's distribution over "0".."10" at its place in ``{"scores": [...]}`` (its expectation, a
float on the same 0..10 scale, or its argmax: ``token_reduce``), so no answer fails to parse. Prompt templates are
editable files under ``prompts/``; their text is part of every cache key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgvlm import paths
from rgvlm.config import Config, ParamError, param
from rgvlm.data.storage import OfflineDataset
from rgvlm.rewards.base import RewardResult, check_failure_rate
from rgvlm.rewards.queries import (
    Segment,
    TwoStageQuery,
    action_names,
    ask_two_stage,
    episode_pngs,
    frame_indices,
    invalid_answer_note,
    load_templates,
    numbered_actions,
    provenance_record,
)
from rgvlm.vlm.base import FailurePolicy, LVLMClient
from rgvlm.vlm.parsing import SCORE_MAX, parse_scores
from rgvlm.vlm.scripted import SegmentTruth
from rgvlm.vlm.token_probs import AnswerTemplate


@dataclass(frozen=True)
class RGVLMConfig(Config):
    """How windows are cut and queried (the ``rg_vlm`` section; every key is optional)."""

    SECTION = "rg_vlm"
    window_length: int = param(16, low=1)  # transitions per query
    window_stride: int = param(16, low=1)  # start-to-start distance; < window_length overlaps windows
    frame_stride: int = param(4, low=1)  # every n-th observation of the window is shown (and its last)
    tile_size: int = param(16, low=1)  # pixels per grid cell in the frames
    max_reasks: int = param(2, low=0)  # stage-2 re-asks after an answer the parser rejects
    fallback_score: int = param(0, low=0, high=SCORE_MAX)  # score of every action of a window whose answers all failed
    stage1_max_new_tokens: int = param(512, low=1)
    stage2_max_new_tokens: int = param(256, low=1)
    prompt_dir: str = param(str(paths.PROMPTS), internal=True)


def config_from_params(raw: Any) -> RGVLMConfig:
    """The ``rg_vlm`` section of params.yaml as a checked config; every key is optional."""
    return RGVLMConfig.from_section(raw)


def episode_windows(length: int, window_length: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) windows covering every transition of an episode of ``length`` steps; the
    last one may be shorter."""
    windows = []
    for start in range(0, length, stride):
        windows.append((start, min(start + window_length, length)))
        if start + window_length >= length:
            break
    return windows


def label_rg_vlm(
    dataset: OfflineDataset,
    stage1: LVLMClient,
    stage2: LVLMClient,
    config: RGVLMConfig = RGVLMConfig(),
    needs_images: bool = True,
    failure_policy: FailurePolicy | None = None,
) -> tuple[RewardResult, dict]:
    """Label every transition; returns the reward set and the labelling statistics."""
    started = time.perf_counter()
    if config.window_length > dataset.max_episode_limit:
        raise ParamError("rg_vlm.window_length", config.window_length,
                         f"at most {dataset.max_episode_limit}, the longest trajectory the dataset allows")
    templates = load_templates("rg_vlm", config.prompt_dir)
    windows: list[Segment] = []
    queries: list[TwoStageQuery] = []
    completed_all = dataset.completed_per_step
    words = action_names(dataset)
    for index, episode in enumerate(dataset.episodes):
        spans = episode_windows(episode["length"], config.window_length, config.window_stride)
        shown = {t: None for s, e in spans for t in frame_indices(s, e, config.frame_stride)}
        frames = {}
        if needs_images:
            order = sorted(shown)
            frames = dict(zip(order, episode_pngs(dataset, index, order, config.tile_size), strict=True))
        steps = dataset.episode_steps(index)
        actions, completed = dataset.actions[steps], completed_all[steps]
        for s, e in spans:
            images = tuple(frames[t] for t in frame_indices(s, e, config.frame_stride)) if needs_images else ()
            done_texts = []
            progress = int(dataset.progress_before[steps][s])
            for count in completed[s:e]:
                done_texts += episode["subtasks"][progress : progress + int(count)]
                progress += int(count)
            names = tuple(words[int(a)] for a in actions[s:e])
            truth1 = SegmentTruth(1, tuple(int(c) for c in completed[s:e]), names, tuple(done_texts))
            truth2 = SegmentTruth(2, truth1.completed, names, truth1.subtasks_completed)
            windows.append(Segment(index, s, e))
            fields = {"goal": episode["mission"], "num_frames": len(images) if images else "no",
                      "actions": numbered_actions(actions[s:e], words), "num_actions": e - s}
            queries.append(TwoStageQuery(fields, images, truth1, truth2))

    def reminder(i: int) -> str:
        return f"Answer with JSON only: exactly {windows[i].end - windows[i].start} integers from 0 to 10."

    answers = ask_two_stage(stage1, stage2, templates, queries,
                            (config.stage1_max_new_tokens, config.stage2_max_new_tokens),
                            lambda i, text: parse_scores(text, windows[i].end - windows[i].start),
                            lambda i, detail: invalid_answer_note(detail, reminder(i)), config.max_reasks,
                            lambda i: AnswerTemplate.json_list("scores", windows[i].length, 0, SCORE_MAX))
    errors, reasks, fallbacks = answers.errors, answers.reasks, answers.failed
    # A score read from token probabilities is its reduced value (the expectation: a float 0..10).
    scores = [read if read is not None else parsed
              for parsed, read in zip(answers.values, answers.token_values, strict=True)]
    scored = sum(read is not None for read in answers.token_values)
    check_failure_rate("rg_vlm", fallbacks, len(windows), errors, failure_policy, "windows")

    total = np.zeros(dataset.num_transitions, dtype=np.float64)
    count = np.zeros(dataset.num_transitions, dtype=np.int64)
    for window, window_scores in zip(windows, scores, strict=True):
        base = dataset.episodes[window.episode]["step_start"]
        values = window_scores if window_scores is not None else (config.fallback_score,) * (window.end - window.start)
        total[base + window.start : base + window.end] += values
        count[base + window.start : base + window.end] += 1
    rewards = (total / np.maximum(count, 1) / SCORE_MAX).astype(np.float32)

    stats = {
        "windows": len(windows),
        "stage2_errors": dict(errors),
        "reasks": reasks,
        "fallback_windows": fallbacks,
        **({"token_probs_windows": scored} if scored else {}),
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    provenance = provenance_record("rg_vlm", "two-stage LVLM query (analysis, then 0-10 score per action)", config,
                                   stage1, stage2)
    return RewardResult("rg_vlm", rewards, provenance=provenance, cost={**stats}), stats


def label(dataset: OfflineDataset, clients: tuple[LVLMClient, LVLMClient], config: RGVLMConfig,
          out_dir: Path, failure_policy: FailurePolicy | None = None) -> tuple[RewardResult, dict]:
    """The labelling stage's entry (:mod:`rgvlm.rewards.registry`)."""
    stage1, stage2 = clients
    return label_rg_vlm(dataset, stage1, stage2, config, needs_images=stage1.backend != "scripted",
                        failure_policy=failure_policy)

