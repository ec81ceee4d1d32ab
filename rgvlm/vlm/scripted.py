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

``scoring="token_probs"`` (:mod:`rgvlm.vlm.token_probs`): a request with an answer template gets
no malformed answer; its noisy answer is drawn as above (same draws), and each slot's
distribution is a discretised Gaussian around the slot's noisy value, over the candidates'
values, with sd ``max(score_sd, 0.5)`` on the 0..10 scale (scaled to the candidates' range: a
3-class rating's sd is a fifth of it). Still not an LVLM: no token was ever scored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rgvlm.vlm.base import LVLMRequest, LVLMResponse
from rgvlm.vlm.token_probs import ChoiceQuery, answer_by_template, scoring_settings, split_scored


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


#: Part of the cache key: a change to what the annotator answers for the same prompt and noise
#: must not be served from answers cached before it. 2: VLM-CaR's decompositions and programs are
#: wrong in an LVLM's ways under ``misattribution`` (rgvlm.methods.vlm_car).
ANNOTATOR_VERSION = 2


class ScriptedAnnotator:
    """A stand-in for an LVLM that reads the privileged ground truth (see module docstring)."""

    backend = "scripted"
    model = "scripted-annotator"

    def __init__(self, noise: ScriptedNoise | None = None, scoring: str = "generate",
                 token_reduce: str = "expectation"):
        self.noise = noise or ScriptedNoise()
        self._scoring_settings = scoring_settings(scoring, token_reduce)
        self.scoring, self.token_reduce = scoring, token_reduce

    def generation_settings(self) -> dict[str, Any]:
        return {"annotator_version": ANNOTATOR_VERSION, **asdict(self.noise), **self._scoring_settings}

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

    def candidate_logprobs(self, queries: list[ChoiceQuery]) -> list[list[float]]:
        """Log-probabilities of each query's candidates from the noise model (see the module
        docstring): the noisy answer of the query's request is drawn, matched against its
        template, and the slot being asked (the one after ``prefix``) gets a discretised Gaussian
        around its noisy value."""
        clean = replace(self.noise, malformed_rate=0.0)
        out = []
        for query in queries:
            template = query.request.template
            if template is None:
                raise ValueError("the scripted annotator scores only requests with an answer template")
            text = ScriptedAnnotator(clean).answer(query.request)
            slot = template.slot_of(query.prefix)
            if slot is None:
                raise ValueError(f"prefix {query.prefix[:80]!r} is not a prefix of the template")
            values = np.asarray(template.values, dtype=float)
            filled = template.match(text)
            # A numeric answer on a finer scale than the candidates' (gvl's percentages against
            # candidates 0, 10, ..., 100) is centred on its own number.
            numbers = template.read_numbers(text) if filled is None else None
            if filled is None and numbers is None:
                raise ValueError(f"the scripted answer {text[:80]!r} does not fit the request's answer template")
            spread = max(float(values.max() - values.min()), 1e-9)
            sd = max(self.noise.score_sd, 0.5) * spread / 10.0
            centre = values[filled[slot]] if filled is not None else numbers[slot]
            out.append((-0.5 * ((values - centre) / sd) ** 2).tolist())
        return out

    def generate(self, requests: list[LVLMRequest]) -> list[LVLMResponse]:
        scored, _ = split_scored(requests, self.scoring)
        if scored:
            chosen = set(scored)
            answers = iter(answer_by_template([requests[i] for i in scored], self.candidate_logprobs,
                                              self.token_reduce))
            rest = iter(self.generate_text([r for i, r in enumerate(requests) if i not in chosen]))
            return [next(answers) if i in chosen else next(rest) for i in range(len(requests))]
        return self.generate_text(requests)

    def generate_text(self, requests: list[LVLMRequest]) -> list[LVLMResponse]:
        """Answers as text, as a generating LVLM gives them."""
        responses = []
        for request in requests:
            text = self.answer(request)
            # Token counts as a real model would report them, roughly (4 characters a token).
            responses.append(LVLMResponse(text=text, prompt_tokens=len(request.prompt) // 4,
                                          completion_tokens=max(1, len(text) // 4)))
        return responses
