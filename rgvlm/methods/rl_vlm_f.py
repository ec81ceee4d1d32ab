"""RL-VLM-F: rewards learned from LVLM *preferences* between two segments (Wang et al., 2024).

``num_queries`` pairs of segments that share a mission are drawn from the dataset
(:func:`rgvlm.rewards.segments.sample_segment_pairs`). For each pair the LVLM sees the frames of
both segments (segment 0's, then segment 1's), their numbered actions and the mission, and is asked

1. (stage 1) to describe what the agent does in each segment with respect to the task, then
2. (stage 2) given that description, which segment makes more progress, as one line
   ``Preference: 0``, ``Preference: 1`` or ``Preference: -1`` (cannot tell).

The answer is parsed strictly (:func:`parse_preference`; "cannot tell" is accepted for -1);
a rejected answer is re-asked up to ``max_reasks`` times, then the pair is dropped. Pairs the
LVLM cannot tell apart are dropped too, and counted, as in the paper. A Bradley-Terry reward
ensemble (``ensemble_size`` members, default 3) is trained with cross-entropy on the remaining
preferences; the ensemble mean relabels every transition (:mod:`rgvlm.rewards.reward_model`).

The original compares two single observations; here a "segment" of ``segment_length``
transitions (1 gives single steps), so the same LVLM budget covers as many transitions as
ERL-VLM's ratings and RG-VLM's windows. With the scripted annotator (not an LVLM), the answers
come from :class:`PreferenceTruth`.
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
    RewardEnsemble,
    embed_missions,
    fit_and_relabel,
    label_with_reward_model,
    reward_model_record,
    train_preference_model,
)
from rgvlm.rewards.segments import (
    Segment,
    SegmentFacts,
    SegmentMethodConfig,
    actions_text,
    answer_field,
    sample_segment_pairs,
    segment_facts,
    segment_frames,
    segment_steps,
)
from rgvlm.vlm.base import FailurePolicy, LVLMClient
from rgvlm.vlm.scripted import ScriptedNoise

CANNOT_TELL = -1
# The scripted annotator cannot tell two segments apart when their noisy latent values (in
# completions, see SegmentFacts.latent_value) differ by less than this.
TIE_MARGIN = 0.25


@dataclass(frozen=True)
class RLVLMFConfig(SegmentMethodConfig):
    """How segment pairs are drawn and compared, and how the reward ensemble is trained
    (``rl_vlm_f`` params; the fields are :class:`~rgvlm.rewards.segments.SegmentMethodConfig`'s,
    with a 3-member ensemble trained longer on smaller batches of pairs)."""

    SECTION = "rl_vlm_f"
    ensemble_size: int = param(3, low=1)
    train_steps: int = param(500, low=0)
    batch_size: int = param(16, low=1)  # pairs per gradient step


def config_from_params(raw: Any) -> RLVLMFConfig:
    """The ``rl_vlm_f`` section of params.yaml as a checked config; every key is optional."""
    return RLVLMFConfig.from_section(raw)


def parse_preference(text: str) -> ParsedAnswer:
    """0 or 1 (the better segment) or -1 (cannot tell) from a ``Preference: <x>`` answer, or from
    an answer that is just the value. ``cannot tell`` is read as -1.

    Strict: one preference (lines that repeat it count once), exactly 0, 1, -1 or "cannot tell".
    Errors, for any text: ``unparseable`` (no preference line), ``ambiguous`` (preference lines
    that disagree), ``too_long`` and ``invalid_value`` (:func:`~rgvlm.rewards.segments.answer_field`)."""
    value, error, reason = answer_field(text, "Preference")
    if value is None:
        return ParsedAnswer(None, error, reason)
    key = " ".join(value.lower().split())
    choices = {"0": 0, "1": 1, "-1": CANNOT_TELL, "cannot tell": CANNOT_TELL}
    if key not in choices:
        return ParsedAnswer(None, "invalid_value", f"{value[:40]!r} is not 0, 1 or -1")
    return ParsedAnswer(choices[key])


@dataclass(frozen=True)
class PreferenceTruth:
    """Ground truth of one preference query, answering for the scripted annotator (privileged).

    Stage 1: both segments' descriptions (:meth:`SegmentFacts.describe`, exact).
    Stage 2: the two segments' noisy latent values ``v0``, ``v1`` are drawn independently
    (:meth:`SegmentFacts.latent_value`: completions, approach steps a third each, per-step
    Gaussian noise ``score_sd`` on the 0..10 scale, misattribution); the answer is
    ``Preference: -1`` (cannot tell) when ``|v1 - v0| < TIE_MARGIN`` (0.25 completions), else the
    segment with the larger value. With probability ``malformed_rate`` the answer is malformed
    instead (a segment that does not exist, prose without a preference, or two preferences), so
    the parser rejects it and the pair is re-asked.
    """

    stage: int
    facts0: SegmentFacts
    facts1: SegmentFacts

    def preference(self, rng: np.random.Generator, noise: ScriptedNoise) -> int:
        difference = self.facts1.latent_value(rng, noise) - self.facts0.latent_value(rng, noise)
        return CANNOT_TELL if abs(difference) < TIE_MARGIN else int(difference > 0)

    def scripted_answer(self, rng: np.random.Generator, noise: ScriptedNoise) -> str:
        if self.stage == 1:
            return f"Segment 0: {self.facts0.describe()}\nSegment 1: {self.facts1.describe()}"
        choice = self.preference(rng, noise)
        if rng.random() < noise.malformed_rate:
            kind = int(rng.integers(3))
            if kind == 0:
                return "Preference: 2"
            if kind == 1:
                return "Both segments show the agent moving around the room."
            return "Preference: 0\nPreference: 1"
        return f"Preference: {choice}"


def _frames_note(count0: int, count1: int) -> str:
    if not count0:
        return "No frames are shown; judge from the actions."
    return (f"You are shown top-down frames of both, in time order: the first {count0} images show segment 0, "
            f"the next {count1} segment 1.")


def label_rl_vlm_f(
    dataset: OfflineDataset,
    stage1: LVLMClient,
    stage2: LVLMClient,
    config: RLVLMFConfig = RLVLMFConfig(),
    needs_images: bool = True,
    mission_table: torch.Tensor | np.ndarray | None = None,
    failure_policy: FailurePolicy | None = None,
) -> tuple[RewardResult, dict[str, Any], RewardEnsemble]:
    """Compare segment pairs, fit the Bradley-Terry ensemble, relabel every transition.

    ``mission_table`` is the MissionEmbedder table of ``dataset.missions`` (``[M, slots, 384]``);
    None embeds them here. Returns the reward set, the labelling statistics and the trained
    reward ensemble (``state_dict()`` to save it; see :func:`~rgvlm.rewards.reward_model.save_reward_model`).
    """
    started = time.perf_counter()
    if mission_table is None:
        mission_table = embed_missions(dataset)
    templates = load_templates("rl_vlm_f", config.prompt_dir)
    pairs = sample_segment_pairs(dataset, config.num_queries, config.segment_length, config.seed)
    firsts, seconds = [p[0] for p in pairs], [p[1] for p in pairs]
    if needs_images:
        frames0 = segment_frames(dataset, firsts, config.frame_stride, config.tile_size)
        frames1 = segment_frames(dataset, seconds, config.frame_stride, config.tile_size)
    else:
        frames0 = frames1 = [()] * len(pairs)
    completed = dataset.completed_per_step

    def fields_of(a: Segment, b: Segment, images0: tuple, images1: tuple) -> dict[str, Any]:
        return {"goal": dataset.episodes[a.episode]["mission"], "frames": _frames_note(len(images0), len(images1)),
                "segment_0": a.label(), "segment_1": b.label(),
                "actions_0": actions_text(dataset, a), "actions_1": actions_text(dataset, b)}

    queries = []
    for (a, b), i0, i1 in zip(pairs, frames0, frames1, strict=True):
        facts = (segment_facts(dataset, a, completed), segment_facts(dataset, b, completed))
        queries.append(TwoStageQuery(fields_of(a, b, i0, i1), (*i0, *i1), PreferenceTruth(1, *facts),
                                     PreferenceTruth(2, *facts)))
    reminder = "Answer with one line only: Preference: 0, Preference: 1 or Preference: -1."
    asked = ask_two_stage(stage1, stage2, templates, queries,
                          (config.stage1_max_new_tokens, config.stage2_max_new_tokens),
                          lambda _, text: parse_preference(text),
                          lambda _, detail: invalid_answer_note(detail, reminder), config.max_reasks)
    answers, errors, reasks = asked.values, asked.errors, asked.reasks
    check_failure_rate("rl_vlm_f", asked.failed, len(queries), errors, failure_policy, "pairs")
    kept = [i for i, a in enumerate(answers) if a in (0, 1)]
    preferences = np.array([answers[i] for i in kept], dtype=np.float32)
    steps0, mask0 = segment_steps(dataset, [firsts[i] for i in kept], config.segment_length)
    steps1, mask1 = segment_steps(dataset, [seconds[i] for i in kept], config.segment_length)
    model, rewards, training = fit_and_relabel(
        dataset, mission_table, config.reward_model(), preferences.size,
        lambda table: train_preference_model(dataset, table, steps0, mask0, steps1, mask1, preferences,
                                             config.reward_model()))
    outcomes = Counter(a for a in answers if a is not None)
    stats = {
        "queries": len(pairs),
        "labelled": int(preferences.size),
        "preferences": {"segment_0": outcomes.get(0, 0), "segment_1": outcomes.get(1, 0)},
        "cannot_tell": outcomes.get(CANNOT_TELL, 0),
        "stage2_errors": dict(errors),
        "reasks": reasks,
        "dropped": sum(a is None for a in answers),
        "reward_model": training,
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    source = ("LVLM preferences between two trajectory segments (description, then 0 / 1 / cannot tell) -> "
              f"Bradley-Terry reward ensemble of {config.ensemble_size} r(s, a), relabelling every transition")
    provenance = provenance_record("rl_vlm_f", source, config, stage1, stage2, reward_model=reward_model_record(model))
    return RewardResult("rl_vlm_f", rewards, provenance=provenance, cost={**stats}), stats, model


def label(dataset: OfflineDataset, clients: tuple[LVLMClient, LVLMClient], config: RLVLMFConfig,
          out_dir: Path, failure_policy: FailurePolicy | None = None) -> tuple[RewardResult, dict[str, Any]]:
    """The labelling stage's entry (:mod:`rgvlm.rewards.registry`); the reward model goes to
    ``out_dir/reward_model.pt``."""
    return label_with_reward_model("rl_vlm_f", label_rl_vlm_f, dataset, clients, config, out_dir, failure_policy)
