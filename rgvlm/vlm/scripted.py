"""The scripted annotator: answers LVLM prompts from the dataset's privileged ground truth.

It is NOT an LVLM. It exists so the whole pipeline runs on a laptop with no model weights,
and every report made with it says "scripted annotator". It answers the same prompts, in
the same text format, through the same parser as a real backend, with configurable noise:

- ``score_sd``: Gaussian noise added to every score (then rounded and clipped to 0..10);
- ``misattribution``: the chance that a completion's credit goes to a neighbouring action;
- ``malformed_rate``: the chance that a stage-2 answer is malformed (wrong count, a value
  out of range, or prose without JSON), which exercises the re-ask path.

Scores before noise: 10 for an action that completed a sub-task, ``approach_score`` for
the ``approach_steps`` actions right before a completion, ``idle_score`` otherwise.
Answers are deterministic in (noise seed, prompt text): a re-ask with a corrected prompt
draws afresh, a re-run answers identically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rgvlm.vlm.base import LVLMRequest, LVLMResponse


@dataclass(frozen=True)
class ScriptedNoise:
    """Noise settings of the scripted annotator (part of its cache key)."""

    score_sd: float = 1.0
    misattribution: float = 0.1
    malformed_rate: float = 0.02
    approach_steps: int = 3
    approach_score: int = 4
    idle_score: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("score_sd",):
            if getattr(self, name) < 0:
                raise ValueError(f"scripted noise {name}={getattr(self, name)}: expected >= 0")
        for name in ("misattribution", "malformed_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"scripted noise {name}={getattr(self, name)}: expected a probability in [0, 1]")
        for name in ("approach_score", "idle_score"):
            if not 0 <= getattr(self, name) <= 10:
                raise ValueError(f"scripted noise {name}={getattr(self, name)}: expected 0..10")


@dataclass(frozen=True)
class SegmentTruth:
    """What the scripted annotator may know about one segment (privileged)."""

    stage: int  # 1 = analysis, 2 = scores
    completed: tuple[int, ...]  # sub-tasks each action completed
    action_names: tuple[str, ...]
    subtasks_completed: tuple[str, ...]  # the sub-task text each completion refers to, in order


@runtime_checkable
class ScriptedTruth(Protocol):
    """Ground truth of a query type that answers itself (privileged, scripted annotator only).

    ``scripted_answer`` must return text in exactly the format the method's prompt asks a real
    LVLM for, so it goes through the same parser; it draws all randomness from ``rng``
    (seeded by the noise seed and the prompt) and applies ``noise`` (score_sd,
    misattribution, malformed_rate) in the way its docstring states.
    """

    def scripted_answer(self, rng: np.random.Generator, noise: ScriptedNoise) -> str: ...


class ScriptedAnnotator:
    """A stand-in for an LVLM that reads the privileged ground truth (see module docstring)."""

    backend = "scripted"
    model = "scripted-annotator"

    def __init__(self, noise: ScriptedNoise | None = None):
        self.noise = noise or ScriptedNoise()

    def generation_settings(self) -> dict[str, Any]:
        return {"annotator_version": 1, **asdict(self.noise)}

    def _rng(self, request: LVLMRequest) -> np.random.Generator:
        digest = hashlib.sha256(request.prompt.encode("utf-8")).digest()
        return np.random.default_rng([self.noise.seed, int.from_bytes(digest[:8], "little")])

    def clean_scores(self, truth: SegmentTruth, rng: np.random.Generator) -> np.ndarray:
        completed = np.asarray(truth.completed)
        n = completed.size
        scores = np.full(n, float(self.noise.idle_score))
        for t in np.flatnonzero(completed > 0):
            scores[max(0, t - self.noise.approach_steps) : t] = np.maximum(
                scores[max(0, t - self.noise.approach_steps) : t], self.noise.approach_score
            )
        for t in np.flatnonzero(completed > 0):
            target = t
            if rng.random() < self.noise.misattribution and n > 1:
                target = int(np.clip(t + rng.choice([-2, -1, 1, 2]), 0, n - 1))
            scores[target] = 10.0
        return scores

    def answer(self, request: LVLMRequest) -> str:
        truth = request.annotation
        rng = self._rng(request)
        if isinstance(truth, ScriptedTruth):
            # The comparison methods' query types (sub-task lists and programs, ratings,
            # preferences) carry their own ground truth and know how to answer from it.
            return truth.scripted_answer(rng, self.noise)
        if not isinstance(truth, SegmentTruth):
            raise ValueError("the scripted annotator needs the query's ground truth in request.annotation "
                             f"(a SegmentTruth or a ScriptedTruth), got {type(truth).__name__}")
        if truth.stage == 1:
            lines = []
            texts = iter(truth.subtasks_completed)
            for t, count in enumerate(truth.completed):
                for _ in range(count):
                    lines.append(f"Action {t + 1} ({truth.action_names[t]}) completes the sub-task '{next(texts)}'.")
            if not lines:
                lines.append("No action in this window completes a sub-task.")
            lines.append("The other actions move the agent without completing a sub-task.")
            return " ".join(lines)
        scores = self.clean_scores(truth, rng)
        scores = np.clip(np.rint(scores + rng.normal(0.0, self.noise.score_sd, scores.size)), 0, 10).astype(int)
        if rng.random() < self.noise.malformed_rate:
            kind = rng.integers(3)
            if kind == 0:
                return json.dumps({"scores": scores.tolist()[:-1] if scores.size > 1 else [*scores.tolist(), 5]})
            if kind == 1:
                return json.dumps({"scores": [*scores.tolist()[:-1], 11]})
            return "The actions look reasonable overall; most of them help."
        return json.dumps({"scores": scores.tolist()})

    def generate(self, requests: list[LVLMRequest]) -> list[LVLMResponse]:
        responses = []
        for request in requests:
            text = self.answer(request)
            # Token counts as a real model would report them, roughly (4 characters a token).
            responses.append(LVLMResponse(text=text, prompt_tokens=len(request.prompt) // 4,
                                          completion_tokens=max(1, len(text) // 4)))
        return responses
