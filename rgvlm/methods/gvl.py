"""GVL: progress estimation on shuffled frames (Ma et al., "Vision Language Models are In-Context
Value Learners", ICLR 2025; arXiv 2411.04549).

For every window of ``window_length`` transitions of an episode (0: the whole episode in one
query) the LVLM sees the mission, the episode's **first frame as an anchor** (0% complete) and
the window's frames (every ``frame_stride``-th observation after the window's start, and its
last) **in shuffled order**, labelled Frame 1..n in the order shown, so that it cannot answer a
monotone ramp by position. It returns the task completion of each frame, 0-100, as JSON
(``{"completion": [c1, ..., cn]}``, label order), read by a total parser (:func:`parse_completion`:
any text gives the values or a named failure). The anchor is the episode's first frame in every
window, so every answer is the completion of the *whole* task and the windows join up.

``two_stage: true`` first asks for a free-text analysis of the frames (``prompts/gvl_stage1.txt``),
then the completions given it (``prompts/gvl_stage2.txt``, from ``labelling.stage2_model`` when
set), as RG-VLM does, so that the two are comparable query for query; ``false`` (GVL as
published) asks the main model for the completions directly (the same template, no analysis).

Progress of the observations not shown (between two shown frames) is **interpolated linearly**
between the shown frames' answers (the first observation is the anchor, 0). A window whose
answers all failed after ``max_reasks`` re-asks is left out and its frames interpolated from
its neighbours (counted as ``fallback_windows``; ``labelling.max_failure_rate`` applies).

Reward per transition t (``reward``): ``delta`` = progress(t+1) - progress(t) (sums to the
episode's final progress), or ``progress`` = progress(t+1). Either way the per-state progress
series progress(t+1) is kept beside the rewards (``RewardResult.values``) for the label-quality
measure VOC (:mod:`rgvlm.evaluation.label_quality`).

With ``scoring: token_probs`` in the LVLM section (:mod:`rgvlm.vlm.token_probs`) each frame's
completion is read from the model's distribution over "0", "10", ..., "100" at its place in
``{"completion": [...]}`` (its expectation, or its argmax: ``token_reduce``), so no answer fails to
parse.

The scripted annotator (NOT an LVLM) answers from the privileged sub-task progress (sub-tasks
done / k at each shown frame) under the same noise knobs as every other query kind
(:class:`ProgressTruth`).
"""

from __future__ import annotations

import json
import re
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
    ParsedAnswer,
    Segment,
    ask_with_reasks,
    episode_pngs,
    frame_indices,
    invalid_answer_note,
    load_templates,
    provenance_record,
)
from rgvlm.vlm.base import FailurePolicy, LVLMClient, LVLMRequest
from rgvlm.vlm.parsing import Number, parse_json_list
from rgvlm.vlm.scripted import ScriptedNoise
from rgvlm.vlm.token_probs import AnswerTemplate

PERCENT_MAX = 100
#: Under token_probs a percentage is read over "0", "10", ..., "100": as many candidates as
#: RG-VLM's 0..10 scores, so a window costs the same number of candidate forward passes.
TOKEN_PROBS_STEP = 10
REWARDS = ("delta", "progress")


@dataclass(frozen=True)
class GVLConfig(Config):
    """How windows are cut and queried (the ``gvl`` section; every key is optional)."""

    SECTION = "gvl"
    window_length: int = param(64, low=0)  # transitions per query; 0 = the whole episode in one query
    frame_stride: int = param(4, low=1)  # every n-th observation of the window is shown (and its last)
    reward: str = param("delta", choices=REWARDS)  # delta = progress(t+1) - progress(t); progress = progress(t+1)
    two_stage: bool = param(False)  # an analysis of the frames first (as RG-VLM), then the completions
    tile_size: int = param(16, low=1)  # pixels per grid cell in the frames
    max_reasks: int = param(2, low=0)  # re-asks after an answer the parser rejects
    seed: int = param(0, low=0)  # the frames' shuffle
    stage1_max_new_tokens: int = param(512, low=1)
    stage2_max_new_tokens: int = param(256, low=1)
    prompt_dir: str = param(str(paths.PROMPTS), internal=True)

    def check(self) -> None:
        if 0 < self.window_length < self.frame_stride:
            raise ParamError("gvl.window_length", self.window_length,
                             f"0 (the whole episode) or at least gvl.frame_stride={self.frame_stride}")


def config_from_params(raw: Any) -> GVLConfig:
    """The ``gvl`` section of params.yaml as a checked config; every key is optional."""
    return GVLConfig.from_section(raw)


# -- the parser ---------------------------------------------------------------------------
_DECIMAL_LITERAL = re.compile(r"-?\d+(?:\.\d+)?")


def _percent(value: Any) -> tuple[float | None, str, str]:
    if not isinstance(value, Number):
        return None, "not_number", f"completion {value!r} is not a number"
    if value.value is None:
        return None, "not_finite", f"completion {value!r} is not a finite number"
    if not 0 <= value.value <= PERCENT_MAX:
        return None, "out_of_range", f"completion {value!r} is outside 0..{PERCENT_MAX}"
    if not _DECIMAL_LITERAL.fullmatch(value.literal):
        return None, "not_number", f"completion {value!r} is not written as a plain decimal number"
    return float(value.value), "", ""


def parse_completion(text: Any, expected: int) -> ParsedAnswer:
    """``{"completion": [c_1, ..., c_expected]}``, each a number in 0..100, out of any answer; never
    raises, never guesses. Failures as RG-VLM's parser names them (``unparseable``, ``ambiguous``,
    ``wrong_count``, ``out_of_range``, ``not_finite``, ``too_long``), and ``not_number`` (a string,
    a boolean, exponent notation)."""
    return ParsedAnswer(*parse_json_list(text, "completion", expected, _percent, ("completions", "frames")))


# -- the scripted annotator's ground truth ------------------------------------------------
@dataclass(frozen=True)
class ProgressTruth:
    """What the scripted annotator may know about one GVL query (privileged).

    Stage 1: which sub-tasks each frame shows done, in words (exact). Stage 2: the completion of
    each frame, 100 x (sub-tasks done / k), with the shared noise knobs: ``misattribution`` (each
    change of progress between two consecutive shown frames is, with that chance, seen one frame
    early or late), ``score_sd`` (Gaussian noise on the percentage; the knob is on RG-VLM's 0-10
    scale, so the percentage gets 10 x score_sd), rounded and clipped to 0..100, and
    ``malformed_rate`` (a wrong count, a value of 120, or prose without JSON)."""

    stage: int  # 1 = analysis, 2 = completions
    progress: tuple[float, ...]  # fraction of the task done at each shown frame, chronological
    order: tuple[int, ...]  # order[j]: the chronological position of the frame shown as Frame j + 1
    done: tuple[int, ...]  # sub-tasks done at each shown frame, chronological
    num_subtasks: int
    #: progress at the window's start (the anchor's 0, or the previous window's last frame): a change
    #: between it and the first shown frame can be seen late too, and none is made up
    start: float = 0.0

    def scripted_answer(self, rng: np.random.Generator, noise: ScriptedNoise) -> str:
        n = len(self.progress)
        if self.stage == 1:
            lines = [f"Frame {j + 1}: {self.done[i]} of {self.num_subtasks} sub-tasks done."
                     for j, i in enumerate(self.order)]
            return " ".join([*lines, "The first image is the start: nothing is done."])
        clean = np.asarray(self.progress, dtype=np.float64) * PERCENT_MAX
        seen = clean.copy()
        for i in range(n):
            before = clean[i - 1] if i else PERCENT_MAX * self.start
            if clean[i] != before and rng.random() < noise.misattribution:
                if i > 0 and rng.random() < 0.5:
                    seen[i - 1] = clean[i]  # the change seen one frame early
                else:
                    seen[i] = before  # ... or one frame late
        percent = np.clip(np.rint(seen + rng.normal(0.0, 10.0 * noise.score_sd, n)), 0, PERCENT_MAX).astype(int)
        shown = [int(percent[i]) for i in self.order]
        if rng.random() < noise.malformed_rate:
            kind = rng.integers(3)
            if kind == 0:
                return json.dumps({"completion": shown[:-1] if n > 1 else [*shown, 50]})
            if kind == 1:
                return json.dumps({"completion": [*shown[:-1], 120]})
            return "The later frames look closer to the goal than the earlier ones."
        return json.dumps({"completion": shown})


# -- labelling ----------------------------------------------------------------------------
def episode_windows(length: int, window_length: int) -> list[tuple[int, int]]:
    """Abutting [start, end) windows over an episode of ``length`` transitions (0: one window)."""
    if window_length <= 0:
        return [(0, length)]
    return [(start, min(start + window_length, length)) for start in range(0, length, window_length)]


def window_frames(start: int, end: int, frame_stride: int) -> list[int]:
    """The observations a window asks about: every ``frame_stride``-th after ``start``, and ``end``
    (``start`` is the previous window's last frame, or the anchor)."""
    return frame_indices(start, end, frame_stride)[1:]


def interpolate_progress(length: int, known: dict[int, float]) -> np.ndarray:
    """Progress of observations 1..length (float64 [length]) from the answers ``known``
    (observation -> fraction), linear between them; observation 0, the anchor, is 0. After the
    last known observation the last value holds."""
    times = np.array([0, *sorted(known)], dtype=np.float64)
    values = np.array([0.0, *(known[t] for t in sorted(known))], dtype=np.float64)
    return np.interp(np.arange(1, length + 1, dtype=np.float64), times, values)


def label_gvl(dataset: OfflineDataset, stage1: LVLMClient, stage2: LVLMClient, config: GVLConfig = GVLConfig(),
              needs_images: bool = True, failure_policy: FailurePolicy | None = None) -> tuple[RewardResult, dict]:
    """Label every transition; returns the reward set (with its progress series as ``values``) and
    the labelling statistics."""
    started = time.perf_counter()
    template1, template2 = load_templates("gvl", config.prompt_dir)
    windows: list[Segment] = []
    shown: list[list[int]] = []  # per window: the observations asked about, in the order shown
    fields_list: list[dict[str, Any]] = []
    truths: list[tuple[ProgressTruth, ProgressTruth]] = []
    images_list: list[tuple[bytes, ...]] = []
    frame_counts = []
    for index, episode in enumerate(dataset.episodes):
        length, k = episode["length"], max(int(episode["k"]), 1)
        done_after = dataset.progress[dataset.episode_steps(index)].astype(np.int64)
        spans = episode_windows(length, config.window_length)
        frames: dict[int, bytes] = {}
        if needs_images:
            needed = sorted({0, *(t for s, e in spans for t in window_frames(s, e, config.frame_stride))})
            frames = dict(zip(needed, episode_pngs(dataset, index, needed, config.tile_size), strict=True))
        for s, e in spans:
            times = window_frames(s, e, config.frame_stride)
            rng = np.random.default_rng([config.seed, index, s])
            order = tuple(int(i) for i in rng.permutation(len(times)))
            done = tuple(min(int(done_after[t - 1]), k) for t in times)
            segment = Segment(index, s, e)
            images = (frames[0], *(frames[times[i]] for i in order)) if needs_images else ()
            fields = {"goal": episode["mission"], "segment": segment.label(), "num_frames": len(times)}
            progress = tuple(d / k for d in done)
            start = min(int(done_after[s - 1]), k) / k if s > 0 else 0.0
            windows.append(segment)
            shown.append([times[i] for i in order])
            frame_counts.append(len(times))
            fields_list.append(fields)
            truths.append((ProgressTruth(1, progress, order, done, k, start), ProgressTruth(2, progress, order, done, k, start)))
            images_list.append(images)

    analyses: list[Any] = [None] * len(windows)
    if config.two_stage:  # as rgvlm.rewards.queries.ask_two_stage, with the analysis optional in the template
        analyses = [a.text for a in stage1.generate([
            LVLMRequest(prompt=template1.format(**f), images=im, max_new_tokens=config.stage1_max_new_tokens,
                        annotation=t1)
            for f, im, (t1, _) in zip(fields_list, images_list, truths, strict=True)])]
    requests = [
        LVLMRequest(prompt=template2.format(**f, analysis="" if a is None else f"An analysis of these frames:\n{a}\n\n"),
                    images=im, max_new_tokens=config.stage2_max_new_tokens, annotation=t2,
                    template=AnswerTemplate.json_list("completion", len(times), 0, int(PERCENT_MAX), TOKEN_PROBS_STEP))
        for f, im, (_, t2), a, times in zip(fields_list, images_list, truths, analyses, shown, strict=True)
    ]

    def reminder(i: int) -> str:
        return (f"Answer with JSON only: {{\"completion\": [...]}} with exactly {len(shown[i])} numbers from 0 to 100, "
                "Frame 1 first.")

    # Two stages: the completions from the stage-2 model (labelling.stage2_model, maybe cheaper), as
    # RG-VLM's scores; one stage: from the main model, the only query.
    answerer = stage2 if config.two_stage else stage1
    answers = ask_with_reasks(answerer, requests, lambda i, text: parse_completion(text, len(shown[i])),
                              lambda i, detail: invalid_answer_note(detail, reminder(i)), config.max_reasks)
    check_failure_rate("gvl", answers.failed, len(windows), answers.errors, failure_policy, "windows")
    # Under labelling.scoring: token_probs each percentage is read from the distribution over the
    # template's candidates (its expectation or argmax), not parsed.
    completions = [read if read is not None else parsed
                   for parsed, read in zip(answers.values, answers.token_values, strict=True)]
    scored = sum(read is not None for read in answers.token_values)

    known: list[dict[int, float]] = [{} for _ in dataset.episodes]
    for window, times, values in zip(windows, shown, completions, strict=True):
        if values is not None:
            known[window.episode].update({t: v / PERCENT_MAX for t, v in zip(times, values, strict=True)})
    values_all = np.zeros(dataset.num_transitions, dtype=np.float64)
    rewards = np.zeros(dataset.num_transitions, dtype=np.float64)
    for index, episode in enumerate(dataset.episodes):
        after = interpolate_progress(episode["length"], known[index])  # progress(t + 1)
        before = np.concatenate([[0.0], after[:-1]])
        steps = dataset.episode_steps(index)
        values_all[steps] = after
        rewards[steps] = after - before if config.reward == "delta" else after

    stats = {
        "windows": len(windows),
        "frames_per_query_mean": round(float(np.mean(frame_counts)), 3) if frame_counts else 0.0,
        "frames_per_query_max": int(max(frame_counts, default=0)),
        "queries_per_episode_mean": round(len(windows) / max(len(dataset.episodes), 1), 3),
        "stage2_errors": dict(answers.errors),
        "reasks": answers.reasks,
        "fallback_windows": answers.failed,
        **({"token_probs_windows": scored} if scored else {}),
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    source = ("progress estimation on shuffled frames (GVL): "
              f"{'analysis, then ' if config.two_stage else ''}0-100% completion per frame; reward = "
              f"{'progress(t+1) - progress(t)' if config.reward == 'delta' else 'progress(t+1)'}")
    provenance = provenance_record("gvl", source, config, stage1, stage2 if config.two_stage else None)
    return RewardResult("gvl", rewards, provenance=provenance, cost={**stats}, values=values_all), stats


def label(dataset: OfflineDataset, clients: tuple[LVLMClient, LVLMClient], config: GVLConfig,
          out_dir: Path, failure_policy: FailurePolicy | None = None) -> tuple[RewardResult, dict]:
    """The labelling stage's entry (:mod:`rgvlm.rewards.registry`)."""
    stage1, stage2 = clients
    return label_gvl(dataset, stage1, stage2, config, needs_images=stage1.backend != "scripted",
                     failure_policy=failure_policy)


def diagnostic(dataset: OfflineDataset, result: RewardResult, out_dir: Path) -> Any:
    """The progress the LVLM gave (interpolated between the frames it saw) against the privileged
    progress, sub-tasks done / k, on up to four expert episodes of the largest k (a diagnostic:
    the learner never sees the privileged one)."""
    import matplotlib.pyplot as plt

    experts = [i for i, e in enumerate(dataset.episodes) if e.get("kind") == "expert"]
    if result.values is None or not experts:
        return None
    top = max(dataset.episodes[i]["k"] for i in experts)
    chosen = [i for i in experts if dataset.episodes[i]["k"] == top][:4]
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 2.8), squeeze=False)
    for ax, index in zip(axes[0], chosen, strict=True):
        steps, k = dataset.episode_steps(index), max(int(dataset.episodes[index]["k"]), 1)
        t = np.arange(1, steps.stop - steps.start + 1)
        ax.plot(t, dataset.progress[steps] / k, label="privileged progress", drawstyle="steps-post")
        ax.plot(t, result.values[steps], label="GVL progress")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("t")
        ax.set_title(f"episode {index} (k = {k})", fontsize=9)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return fig
