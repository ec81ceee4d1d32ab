"""The query toolkit every LVLM reward method uses (RG-VLM, VLM-CaR, ERL-VLM, RL-VLM-F):

- prompt templates: a method's files under :data:`rgvlm.paths.PROMPTS`, as the registry lists
  them (:func:`load_templates`);
- what a query shows: the frames of a span (:func:`frame_indices`), rendered by replay and
  encoded as PNG (:func:`episode_pngs`, :func:`png_bytes`), and its numbered actions
  (:func:`numbered_actions`);
- the re-ask loop (:func:`ask_with_reasks`): an answer the method's strict parser rejects is
  asked again with the reason appended, a bounded number of times; and the two-stage query of
  RG-VLM, ERL-VLM and RL-VLM-F (:func:`ask_two_stage`: an analysis, then the answer);
- cost accounting (:func:`labelling_cost`) and the provenance record (:func:`provenance_record`)
  of a labelling run.

A method's own prompt text, parser and ground truth for the scripted annotator stay in its module.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rgvlm import paths
from rgvlm.data.replay import replay_dataset_episode
from rgvlm.data.storage import OfflineDataset
from rgvlm.envs import ACTION_NAMES
from rgvlm.rewards.registry import METHODS
from rgvlm.vlm.base import LVLMClient, LVLMRequest
from rgvlm.vlm.token_probs import AnswerTemplate, token_values


# -- prompts ------------------------------------------------------------------------------
def load_templates(method: str, prompt_dir: str | Path = paths.PROMPTS) -> tuple[str, ...]:
    """The text of each prompt file of ``method`` (:attr:`RewardMethod.prompts
    <rgvlm.rewards.registry.RewardMethod.prompts>`, in that order) from ``prompt_dir``."""
    directory = Path(prompt_dir)
    return tuple((directory / name).read_text() for name in METHODS[method].prompts)


# -- what a query shows -------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Segment:
    """The unit every LVLM method asks about (RG-VLM's windows, ERL-VLM's and RL-VLM-F's
    segments): transitions ``start .. end - 1`` (relative to the episode) of episode ``episode``."""

    episode: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def label(self) -> str:
        """How prompts name the segment. It makes every query's text unique, so two segments
        with the same mission and actions never share a cache entry (the scripted annotator
        sees no frames, and its answers come from the segment's own ground truth)."""
        return f"episode {self.episode}, steps {self.start}-{self.end}"


def frame_indices(start: int, end: int, frame_stride: int) -> list[int]:
    """Observation indices shown for the span [start, end): start, every ``frame_stride``-th, and end."""
    shown = list(range(start, end + 1, frame_stride))
    return shown if shown[-1] == end else [*shown, end]


def png_bytes(frame: np.ndarray) -> bytes:
    """A rendered frame as PNG, the bytes every backend and the response cache see."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def episode_pngs(dataset: OfflineDataset, episode: int, times: Sequence[int], tile_size: int) -> list[bytes]:
    """PNG frames of the observations ``times`` (sorted) of one dataset episode, in that order,
    rendered by replaying the episode once. A dataset read from elsewhere brings its own frame
    source as ``dataset.frames`` (:class:`rgvlm.data.minari_import.ForeignDataset`; looked up by name so
    that the labelling stages import nothing of the Minari reader)."""
    own = getattr(dataset, "frames", None)
    if own is not None:
        rendered = own.frames(episode, times, tile_size)
    else:
        rendered = replay_dataset_episode(dataset, episode, tile_size, frames=times)["frames"]
    return [png_bytes(frame) for frame in rendered]


def action_names(dataset: OfflineDataset) -> tuple[str, ...]:
    """The words the prompts use for each action: the suite's, or those a dataset read from
    elsewhere brings (``dataset.action_names``, as for :func:`episode_pngs`)."""
    return getattr(dataset, "action_names", None) or ACTION_NAMES


def numbered_actions(actions: np.ndarray, names: Sequence[str] = ACTION_NAMES) -> str:
    """The actions' names, one a line, numbered from 1 (as the prompts refer to them)."""
    return "\n".join(f"{i + 1}. {names[int(a)]}" for i, a in enumerate(actions))


# -- the re-ask loop ----------------------------------------------------------------------
class Parsed(Protocol):
    """What a method's parser returns for any text: ``value`` (None when rejected) and, when
    rejected, ``error`` (a short category, counted) and ``detail`` (fed back in the re-ask)."""

    value: Any
    error: str | None
    detail: str

    @property
    def ok(self) -> bool: ...


@dataclass(frozen=True)
class ParsedAnswer:
    """``value`` when the answer is valid, else ``error`` (a short category) and ``detail``."""

    value: Any
    error: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.value is not None


def invalid_answer_note(detail: str, reminder: str) -> str:
    """The re-ask note of RG-VLM, ERL-VLM and RL-VLM-F: the parser's reason, then what to answer."""
    return f"\nYour previous answer was invalid ({detail}). {reminder}"


@dataclass
class Answers:
    """The outcome of :func:`ask_with_reasks`."""

    values: list[Any]  # the parsed value of each request; None: no usable answer after its last re-ask
    errors: Counter[str]  # every rejected answer by the parser's reason, re-asks included
    queries: int  # requests sent, re-asks included
    reasks: int  # re-asks sent
    #: Per request, the reduced slot values of an answer read from token probabilities
    #: (``scoring: token_probs``; rgvlm.vlm.token_probs), else None (a generated answer).
    token_values: list[list[float] | None] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Requests left without a usable answer (they get a fallback or are dropped)."""
        return sum(value is None for value in self.values)


def ask_with_reasks(
    client: LVLMClient,
    requests: Sequence[LVLMRequest],
    parse: Callable[[int, str], Parsed],
    reask_note: Callable[[int, str], str],
    max_reasks: int,
) -> Answers:
    """Ask every request; re-ask each rejected answer, at most ``max_reasks`` times, with
    ``reask_note(i, detail)`` appended to request ``i``'s prompt (a new prompt, so a new answer
    and a new cache entry; the notes accumulate over the re-asks).

    ``parse(i, text)`` parses the answer to request ``i`` (the index lets a method's parser
    and note depend on the request, e.g. RG-VLM's number of actions). Re-asks are made in
    rounds, one batch per round, so a backend can batch them. An answer read from token
    probabilities (always valid) keeps its slot values in :attr:`Answers.token_values`."""
    values: list[Any] = [None] * len(requests)
    scored: list[list[float] | None] = [None] * len(requests)
    errors: Counter[str] = Counter()
    notes = [""] * len(requests)
    pending = list(range(len(requests)))
    queries = reasks = 0
    for attempt in range(max_reasks + 1):
        if not pending:
            break
        answers = client.generate([replace(requests[i], prompt=requests[i].prompt + notes[i]) for i in pending])
        queries += len(pending)
        still = []
        for i, answer in zip(pending, answers, strict=True):
            parsed = parse(i, answer.text)
            if parsed.ok:
                values[i] = parsed.value
                scored[i] = token_values(answer)
                continue
            errors[parsed.error or "unparseable"] += 1
            notes[i] += reask_note(i, parsed.detail)
            still.append(i)
        if attempt < max_reasks:
            reasks += len(still)
        pending = still
    return Answers(values, errors, queries, reasks, scored)


@dataclass(frozen=True)
class TwoStageQuery:
    """One query of a two-stage method: the fields its prompt templates are filled with, the
    frames shown in both stages, and the scripted annotator's ground truth of each stage."""

    fields: dict[str, Any]
    images: tuple[bytes, ...]
    truth1: Any
    truth2: Any


def ask_two_stage(stage1: LVLMClient, stage2: LVLMClient, templates: tuple[str, str], queries: Sequence[TwoStageQuery],
                  max_new_tokens: tuple[int, int], parse: Callable[[int, str], Parsed],
                  reask_note: Callable[[int, str], str], max_reasks: int,
                  answer_template: Callable[[int], AnswerTemplate] | None = None) -> Answers:
    """Stage 1 asks ``stage1`` for a free-text analysis of every query (template 1); stage 2 asks
    ``stage2`` (possibly a cheaper model) for the answer the method parses, given the same fields
    and ``{analysis}`` (template 2), through :func:`ask_with_reasks`. ``answer_template(i)`` is
    the format of query ``i``'s stage-2 answer, for a backend with ``scoring: token_probs``."""
    template1, template2 = templates
    analyses = stage1.generate([
        LVLMRequest(prompt=template1.format(**q.fields), images=q.images, max_new_tokens=max_new_tokens[0],
                    annotation=q.truth1)
        for q in queries
    ])
    requests = [
        LVLMRequest(prompt=template2.format(**q.fields, analysis=analysis.text), images=q.images,
                    max_new_tokens=max_new_tokens[1], annotation=q.truth2,
                    template=answer_template(i) if answer_template else None)
        for i, (q, analysis) in enumerate(zip(queries, analyses, strict=True))
    ]
    return ask_with_reasks(stage2, requests, parse, reask_note, max_reasks)


# -- cost and provenance ------------------------------------------------------------------
def labelling_cost(usage, stats: dict, prices: dict[str, float]) -> dict:
    """The cost record of a labelling run: calls, cache hits, tokens, time and an estimate in
    USD from ``prices`` (``prompt_per_million`` / ``completion_per_million``)."""
    counts = usage.as_dict()
    usd = (counts["prompt_tokens"] * prices.get("prompt_per_million", 0.0)
           + counts["completion_tokens"] * prices.get("completion_per_million", 0.0)) / 1e6
    return {**counts, **stats, "estimated_cost_usd": round(usd, 4)}


def config_record(config: Any) -> dict[str, Any]:
    """The settings of a method's config dataclass that decide its rewards (``prompt_dir`` is
    where the templates are, not what they say: their text is in every cache key)."""
    return {k: v for k, v in asdict(config).items() if k != "prompt_dir"}


def provenance_record(method: str, source: str, config: Any, stage1: LVLMClient, stage2: LVLMClient | None = None,
                      **extra: Any) -> dict[str, Any]:
    """Where a method's reward came from: the method, what it asked (``source``), the LVLM
    (the stage-2 model too, for a two-stage method), its config and any ``extra`` field."""
    lvlm: dict[str, Any] = {"backend": stage1.backend, "model": stage1.model}
    if stage2 is not None:
        lvlm |= {"stage2_backend": stage2.backend, "stage2_model": stage2.model}
    lvlm["settings"] = stage1.generation_settings()
    scoring = (stage2 or stage1).generation_settings().get("scoring")
    if scoring:  # only token_probs says so: generated answers' records are as they were
        lvlm["scoring"] = scoring
        lvlm["token_reduce"] = (stage2 or stage1).generation_settings().get("token_reduce")
    return {"method": method, "source": source, "lvlm": lvlm, "config": config_record(config), **extra}
