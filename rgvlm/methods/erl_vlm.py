"""ERL-VLM: rewards learned from LVLM *ratings* of trajectory segments (Luu et al., 2025).

``num_queries`` segments of ``segment_length`` transitions are drawn from the dataset
(:mod:`rgvlm.rewards.segments`). For each, the LVLM sees the frames (first, every
``frame_stride``-th and last observation), the numbered actions and the mission, and is asked

1. (stage 1) for a free-text analysis of the segment with respect to the task, then
2. (stage 2) given that analysis, for one rating among ``num_classes`` named classes
   (Bad / Average / Good for 3; :data:`RATING_SCALES`), as one line ``Rating: <class>``.

The stage-2 answer is parsed strictly (:func:`parse_rating`); a rejected answer is re-asked up
to ``max_reasks`` times with the reason appended, then the segment is dropped (and counted).
A reward model r(s, a) is then fitted so each rated segment's predicted return falls into its
class (the rating objective of :mod:`rgvlm.rewards.reward_model`: in-batch min-max returns,
class bounds from the batch's label proportions, softmax over the distance to each class
interval, stratified minibatches, class-weighted MAE; ``loss: ce`` for the cross-entropy
ablation), and relabels every transition of the dataset.

With ``scoring: token_probs`` in the LVLM section (:mod:`rgvlm.vlm.token_probs`) the rating is
read from the model's distribution over the class names after ``Rating: ``: the class nearest
its expectation (over class indices 0..n-1), or its argmax (``token_reduce``); the rating
objective needs a class, so the expectation is rounded to one.

With the scripted annotator (not an LVLM), the answers come from :class:`RatingTruth`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgvlm.config import param
from rgvlm.data.storage import OfflineDataset
from rgvlm.rewards.base import RewardResult, check_failure_rate
from rgvlm.rewards.queries import (
    ParsedAnswer,
    TwoStageQuery,
    ask_two_stage,
    invalid_answer_note,
    load_templates,
    provenance_record,
)
from rgvlm.rewards.reward_model import (
    LOSSES,
    RatingObjective,
    RewardEnsemble,
    embed_missions,
    fit_and_relabel,
    label_with_reward_model,
    reward_model_record,
    train_rating_model,
)
from rgvlm.rewards.segments import (
    Segment,
    SegmentFacts,
    SegmentMethodConfig,
    actions_text,
    answer_field,
    sample_segments,
    segment_facts,
    segment_frames,
    segment_steps,
)
from rgvlm.vlm.base import FailurePolicy, LVLMClient
from rgvlm.vlm.scripted import ScriptedNoise
from rgvlm.vlm.token_probs import AnswerTemplate

# Rating classes, worst first, with what each means (shown to the LVLM). Two or three classes
# worked best in the paper, four hurt; up to five are allowed for ablations.
RATING_SCALES: dict[int, tuple[tuple[str, str], ...]] = {
    2: (("Bad", "the segment makes no progress toward the task"),
        ("Good", "the segment completes a sub-task or clearly moves toward the next one")),
    3: (("Bad", "no progress toward the task: the agent wanders, wastes actions or undoes progress"),
        ("Average", "some progress: the agent moves toward the next sub-task without completing it"),
        ("Good", "the agent completes a sub-task, or is about to")),
    4: (("Very bad", "no progress toward the task at all"),
        ("Bad", "a little progress toward the next sub-task"),
        ("Good", "clear progress toward the next sub-task, without completing it"),
        ("Very good", "the agent completes a sub-task, or is about to")),
    5: (("Very bad", "no progress toward the task at all"),
        ("Bad", "a little progress toward the next sub-task"),
        ("Average", "clear progress toward the next sub-task"),
        ("Good", "the agent is about to complete a sub-task"),
        ("Very good", "the agent completes a sub-task")),
}


@dataclass(frozen=True)
class ERLVLMConfig(SegmentMethodConfig):
    """How segments are drawn and rated, and how the reward model is trained (``erl_vlm`` params;
    the fields shared with RL-VLM-F are :class:`~rgvlm.rewards.segments.SegmentMethodConfig`'s)."""

    SECTION = "erl_vlm"
    num_classes: int = param(3, choices=tuple(RATING_SCALES))  # rating classes (RATING_SCALES)
    loss: str = param("mae", choices=LOSSES)  # mae (ERL-VLM) | ce (ablation: RbRL's cross-entropy)
    stratified: bool = True  # minibatches drawn class by class, minority first
    class_weighted: bool = True  # loss weights inverse to the class frequency in the batch
    temperature: float = param(0.05, above=0.0)  # of the softmax over negative distances to the class intervals

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in RATING_SCALES[self.num_classes])

    def objective(self) -> RatingObjective:
        return RatingObjective(self.num_classes, self.temperature, self.loss, self.stratified, self.class_weighted)


def config_from_params(raw: Any) -> ERLVLMConfig:
    """The ``erl_vlm`` section of params.yaml as a checked config; every key is optional."""
    return ERLVLMConfig.from_section(raw)


# -- parsing ----------------------------------------------------------------------------
def parse_rating(text: str, class_names: tuple[str, ...]) -> ParsedAnswer:
    """The class index of a ``Rating: <class>`` answer (or of an answer that is just the class name).

    Strict: one rating (rating lines that repeat it count once), exactly one of ``class_names``
    (case and surrounding markdown or punctuation ignored). Errors, for any text: ``unparseable``
    (no rating line), ``ambiguous`` (rating lines that disagree), ``too_long`` and
    ``unknown_class`` (:func:`~rgvlm.rewards.segments.answer_field`)."""
    value, error, reason = answer_field(text, "Rating")
    if value is None:
        return ParsedAnswer(None, error, reason)
    lookup = {" ".join(name.lower().split()): i for i, name in enumerate(class_names)}
    key = " ".join(value.lower().split())
    if key not in lookup:
        return ParsedAnswer(None, "unknown_class", f"{value[:40]!r} is not one of {', '.join(class_names)}")
    return ParsedAnswer(lookup[key])


@dataclass(frozen=True)
class RatingTruth:
    """Ground truth of one rating query, answering for the scripted annotator (privileged).

    Stage 1: the segment's analysis in words (:meth:`SegmentFacts.describe`, exact).
    Stage 2: ``Rating: <class>`` with the class read off the segment's noisy latent value ``v``
    (:meth:`SegmentFacts.latent_value`: completions in the segment, approach steps counting a
    third each, per-step Gaussian noise ``score_sd`` on the 0..10 scale, credit misattributed
    with probability ``misattribution``): class ``clip(floor(v * (n - 1) + 0.5), 0, n - 1)``, so
    one completion (v = 1) is the top class and an idle segment (v = 0) the bottom one; for three
    classes the bounds are v = 0.25 and 0.75. With probability ``malformed_rate`` the answer is
    malformed instead (a class that does not exist, prose without a rating, or two ratings that disagree), so
    the parser rejects it and the segment is re-asked.
    """

    stage: int
    facts: SegmentFacts
    class_names: tuple[str, ...]

    def rating(self, rng: np.random.Generator, noise: ScriptedNoise) -> int:
        n = len(self.class_names)
        return int(np.clip(np.floor(self.facts.latent_value(rng, noise) * (n - 1) + 0.5), 0, n - 1))

    def scripted_answer(self, rng: np.random.Generator, noise: ScriptedNoise) -> str:
        if self.stage == 1:
            return self.facts.describe()
        label = self.rating(rng, noise)
        if rng.random() < noise.malformed_rate:
            kind = int(rng.integers(3))
            if kind == 0:
                return "Rating: Excellent"
            if kind == 1:
                return "The agent does a few sensible things in this segment."
            # Two ratings that disagree (two equal ones would be one valid rating).
            other = 0 if label else len(self.class_names) - 1
            return f"Rating: {self.class_names[label]}\nRating: {self.class_names[other]}"
        return f"Rating: {self.class_names[label]}"


def _frames_note(count: int) -> str:
    return (f"You are shown {count} top-down frames of this segment, in time order." if count
            else "No frames are shown; judge from the actions.")


# -- labelling --------------------------------------------------------------------------
def label_erl_vlm(
    dataset: OfflineDataset,
    stage1: LVLMClient,
    stage2: LVLMClient,
    config: ERLVLMConfig = ERLVLMConfig(),
    needs_images: bool = True,
    mission_table: torch.Tensor | np.ndarray | None = None,
    failure_policy: FailurePolicy | None = None,
) -> tuple[RewardResult, dict[str, Any], RewardEnsemble]:
    """Rate segments, fit the reward model, relabel every transition.

    ``mission_table`` is the MissionEmbedder table of ``dataset.missions`` (``[M, slots, 384]``);
    None embeds them here. Returns the reward set, the labelling statistics and the trained
    reward model (``state_dict()`` to save it; see :func:`~rgvlm.rewards.reward_model.save_reward_model`).
    """
    started = time.perf_counter()
    if mission_table is None:
        mission_table = embed_missions(dataset)
    templates = load_templates("erl_vlm", config.prompt_dir)
    names = config.class_names
    segments = sample_segments(dataset, config.num_queries, config.segment_length, config.seed)
    frames = (segment_frames(dataset, segments, config.frame_stride, config.tile_size) if needs_images
              else [()] * len(segments))
    completed = dataset.completed_per_step
    scale = "\n".join(f"- {name}: {meaning}" for name, meaning in RATING_SCALES[config.num_classes])

    def fields_of(segment: Segment, images: tuple[bytes, ...]) -> dict[str, Any]:
        return {"goal": dataset.episodes[segment.episode]["mission"], "segment": segment.label(),
                "frames": _frames_note(len(images)), "actions": actions_text(dataset, segment),
                "num_actions": segment.length, "num_classes": config.num_classes, "rating_scale": scale,
                "class_names": " | ".join(names)}

    facts = [segment_facts(dataset, s, completed) for s in segments]
    queries = [TwoStageQuery(fields_of(s, images), images, RatingTruth(1, f, names), RatingTruth(2, f, names))
               for s, images, f in zip(segments, frames, facts, strict=True)]
    reminder = f"Answer with one line only: Rating: <one of {', '.join(names)}>."
    answers = ask_two_stage(stage1, stage2, templates, queries,
                            (config.stage1_max_new_tokens, config.stage2_max_new_tokens),
                            lambda _, text: parse_rating(text, names),
                            lambda _, detail: invalid_answer_note(detail, reminder), config.max_reasks,
                            lambda _: AnswerTemplate(("Rating: ", ""), names))
    scored = sum(read is not None for read in answers.token_values)
    ratings, errors, reasks = answers.values, answers.errors, answers.reasks
    check_failure_rate("erl_vlm", answers.failed, len(queries), errors, failure_policy, "segments")
    kept = [i for i, r in enumerate(ratings) if r is not None]
    labels = np.array([ratings[i] for i in kept], dtype=np.int64)
    steps, mask = segment_steps(dataset, [segments[i] for i in kept], config.segment_length)
    model, rewards, training = fit_and_relabel(
        dataset, mission_table, config.reward_model(), labels.size,
        lambda table: train_rating_model(dataset, table, steps, mask, labels, config.reward_model(),
                                         config.objective()))
    counts = Counter(int(r) for r in labels)
    stats = {
        "queries": len(segments),
        "labelled": int(labels.size),
        "answers_per_class": {name: counts.get(i, 0) for i, name in enumerate(names)},
        "stage2_errors": dict(errors),
        "reasks": reasks,
        "dropped": len(segments) - int(labels.size),
        **({"token_probs_segments": scored} if scored else {}),
        "reward_model": training,
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    source = ("LVLM ratings of trajectory segments (analysis, then one of "
              f"{config.num_classes} classes: {', '.join(names)}) -> reward model r(s, a) fitted with "
              f"the rating objective ({config.loss.upper()} loss), relabelling every transition")
    provenance = provenance_record("erl_vlm", source, config, stage1, stage2, reward_model=reward_model_record(model))
    return RewardResult("erl_vlm", rewards, provenance=provenance, cost={**stats}), stats, model


def label(dataset: OfflineDataset, clients: tuple[LVLMClient, LVLMClient], config: ERLVLMConfig,
          out_dir: Path, failure_policy: FailurePolicy | None = None) -> tuple[RewardResult, dict[str, Any]]:
    """The labelling stage's entry (:mod:`rgvlm.rewards.registry`); the reward model goes to
    ``out_dir/reward_model.pt``."""
    return label_with_reward_model("erl_vlm", label_erl_vlm, dataset, clients, config, out_dir, failure_policy)
