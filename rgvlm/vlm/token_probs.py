"""Token-probability scoring: read an answer's scores off the model's distribution, not its text.

Instead of generating an answer and parsing the numbers in it, a backend with ``scoring:
token_probs`` fills a *forced-decoding template* (:class:`AnswerTemplate`): the answer's fixed
text with one *slot* per score, e.g. ``{"scores": [`` slot ``, `` slot ``]}`` for RG-VLM or
``Rating: `` slot for ERL-VLM. Slot by slot, it asks the backend for the probability of each
allowed candidate string (``"0"`` .. ``"10"``, or the rating classes) right after the answer so
far (:class:`ChoiceQuery`), normalised over the candidates; earlier slots are filled with their
reduced value (``token_reduce``: the argmax, or the candidate nearest the expectation). The
answer text is the filled template, so it always parses; the distributions and the reduced
values go into the response's ``meta`` (and so into the response cache):

- ``meta["scoring"] = "token_probs"``, ``meta["token_reduce"]``, ``meta["candidates"]``;
- ``meta["token_probs"]``: one list of candidate probabilities per slot (each sums to 1);
- ``meta["token_values"]``: the reduced value of each slot on the candidates' value scale
  (:attr:`AnswerTemplate.values`; the expectation is a float, the argmax a candidate's value).

A candidate may be several tokens ("10", "Average"): its log-probability is the sum of its
tokens' log-probabilities, teacher-forced. When one candidate is a prefix of another ("1" and
"10"), the text after the slot is scored with it (its first non-space character, the
*terminator*: ``"1,"`` against ``"10,"``), or the shorter one would always win.

Backends that support it implement ``candidate_logprobs(queries) -> list[list[float]]`` (the
unnormalised log-probability of each candidate of each query); :func:`answer_by_template` does
the rest. See ``rgvlm.vlm.transformers_backend`` (exact), ``rgvlm.vlm.openai_backend`` (from the
server's ``top_logprobs``) and ``rgvlm.vlm.scripted`` (a distribution from its noise model).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rgvlm.params import SCORINGS, TOKEN_REDUCES  # the choices of the LVLM section's scoring / token_reduce
from rgvlm.vlm.base import LVLMRequest, LVLMResponse


@dataclass(frozen=True)
class AnswerTemplate:
    """An answer's fixed text around its score slots: ``parts[0] slot parts[1] ... slot parts[n]``.

    ``candidates`` are the strings a slot may hold; ``values`` their numbers (what the
    expectation is taken over; default: 0, 1, 2, ... in order). Attached to a request
    (``LVLMRequest.template``) it is used only by a backend with ``scoring: token_probs``, and
    then it is part of the response-cache key.
    """

    parts: tuple[str, ...]
    candidates: tuple[str, ...]
    values: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.parts) < 2:
            raise ValueError("an answer template needs at least one slot (two parts)")
        if not self.candidates or len(set(self.candidates)) != len(self.candidates) or not all(self.candidates):
            raise ValueError(f"candidates {self.candidates!r}: expected distinct, non-empty strings")
        if self.values is None:
            object.__setattr__(self, "values", tuple(float(i) for i in range(len(self.candidates))))
        elif len(self.values) != len(self.candidates):
            raise ValueError(f"{len(self.values)} values for {len(self.candidates)} candidates")

    @classmethod
    def json_list(cls, key: str, count: int, low: int, high: int, step: int = 1) -> AnswerTemplate:
        """``{"<key>": [s1, ..., s_count]}`` with integer scores ``low, low + step, ..., high``, spelt
        as ``json.dumps`` spells it."""
        if count < 1:
            raise ValueError(f"count={count}: expected >= 1")
        if step < 1 or (high - low) % step:
            raise ValueError(f"step={step}: expected a positive divisor of high - low = {high - low}")
        parts = (f'{{"{key}": [',) + (", ",) * (count - 1) + ("]}",)
        numbers = range(low, high + 1, step)
        return cls(parts, tuple(str(n) for n in numbers), tuple(float(n) for n in numbers))

    @property
    def slots(self) -> int:
        return len(self.parts) - 1

    def prefix(self, fills: Sequence[str]) -> str:
        """The answer up to slot ``len(fills)``, with the earlier slots holding ``fills``."""
        return "".join(part + fill for part, fill in zip(self.parts, fills, strict=False)) + self.parts[len(fills)]

    def render(self, fills: Sequence[str]) -> str:
        """The whole answer with every slot filled."""
        if len(fills) != self.slots:
            raise ValueError(f"{len(fills)} fills for {self.slots} slots")
        return self.prefix(fills)

    def terminator(self, slot: int) -> str:
        """What is scored after each candidate of ``slot``: the next part's text up to its first
        non-space character, when a candidate is a prefix of another (else nothing)."""
        if not any(a != b and b.startswith(a) for a in self.candidates for b in self.candidates):
            return ""
        following = self.parts[slot + 1]
        stripped = following.lstrip()
        return following[: len(following) - len(stripped) + 1] if stripped else ""

    def record(self) -> dict[str, Any]:
        """What identifies the template (part of the cache key under token_probs)."""
        return {"parts": list(self.parts), "candidates": list(self.candidates), "values": list(self.values or ())}

    def pattern(self, slots: int) -> str:
        alternatives = "|".join(re.escape(c) for c in sorted(self.candidates, key=len, reverse=True))
        return "".join(re.escape(part) + (f"({alternatives})" if i < slots else "")
                       for i, part in enumerate(self.parts[: slots + 1]))

    def match(self, text: str) -> list[int] | None:
        """The candidate index of each slot when ``text`` is exactly a filled template, else None."""
        found = re.fullmatch(self.pattern(self.slots), text.strip())
        if found is None:
            return None
        return [self.candidates.index(g) for g in found.groups()]

    def read_numbers(self, text: str) -> list[float] | None:
        """The number in each slot when ``text`` is the template filled with numbers (candidates
        or not: an answer on a finer scale than the candidates'), else None."""
        number = r"(-?\d+(?:\.\d+)?)"
        pattern = "".join(re.escape(part) + (number if i < self.slots else "") for i, part in enumerate(self.parts))
        found = re.fullmatch(pattern, text.strip())
        return None if found is None else [float(g) for g in found.groups()]

    def slot_of(self, prefix: str) -> int | None:
        """The slot that comes right after ``prefix`` (the answer so far), or None."""
        for slot in range(self.slots):
            if re.fullmatch(self.pattern(slot), prefix):
                return slot
        return None


@dataclass(frozen=True)
class ChoiceQuery:
    """The probability of each of ``candidates`` as the next text after ``prefix`` (the start of
    the assistant's answer) in the chat turn ``request``; ``terminator`` is scored after each."""

    request: LVLMRequest
    prefix: str
    candidates: tuple[str, ...]
    terminator: str = ""


def normalise(logprobs: Sequence[float]) -> list[float]:
    """Probabilities over the candidates from their log-probabilities (a softmax; -inf is 0)."""
    finite = [lp for lp in logprobs if math.isfinite(lp)]
    if not finite:
        return [1.0 / len(logprobs)] * len(logprobs)  # nothing known: uniform
    top = max(finite)
    weights = [math.exp(lp - top) if math.isfinite(lp) else 0.0 for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def reduce_distribution(probs: Sequence[float], values: Sequence[float], mode: str) -> tuple[float, int]:
    """(value, candidate index) of one slot: the expectation and the candidate nearest it (the
    first of two equally near), or the most likely candidate's value and index."""
    if mode == "expectation":
        expectation = float(sum(p * v for p, v in zip(probs, values, strict=True)))
        index = min(range(len(values)), key=lambda i: (abs(values[i] - expectation), i))
        return expectation, index
    if mode == "argmax":
        index = max(range(len(probs)), key=lambda i: (probs[i], -i))
        return float(values[index]), index
    raise ValueError(f"token_reduce={mode!r}: expected one of {', '.join(TOKEN_REDUCES)}")


def answer_by_template(
    requests: Sequence[LVLMRequest],
    candidate_logprobs: Callable[[list[ChoiceQuery]], list[list[float]]],
    reduce: str,
    prompt_tokens: Callable[[LVLMRequest], int] = lambda r: len(r.prompt) // 4,
) -> list[LVLMResponse]:
    """Answer every request (each with a ``template``) slot by slot: one ``candidate_logprobs``
    call per slot position, over every request that has that slot (see the module docstring)."""
    templates = [r.template for r in requests]
    if any(t is None for t in templates):
        raise ValueError("answer_by_template needs a template on every request")
    fills: list[list[str]] = [[] for _ in requests]
    probs: list[list[list[float]]] = [[] for _ in requests]
    values: list[list[float]] = [[] for _ in requests]
    for slot in range(max(t.slots for t in templates)):
        active = [i for i, t in enumerate(templates) if t.slots > slot]
        queries = [ChoiceQuery(requests[i], templates[i].prefix(fills[i]), templates[i].candidates,
                               templates[i].terminator(slot)) for i in active]
        answers = candidate_logprobs(queries)
        if len(answers) != len(queries):
            raise ValueError(f"{len(answers)} distributions for {len(queries)} queries")
        for i, logprobs in zip(active, answers, strict=True):
            template = templates[i]
            distribution = normalise(logprobs)
            value, index = reduce_distribution(distribution, template.values, reduce)
            fills[i].append(template.candidates[index])
            probs[i].append([round(p, 8) for p in distribution])
            values[i].append(round(value, 8))
    responses = []
    for i, request in enumerate(requests):
        template = templates[i]
        responses.append(LVLMResponse(
            text=template.render(fills[i]),
            prompt_tokens=prompt_tokens(request) * template.slots,  # one pass over the prompt per slot
            completion_tokens=0,
            meta={"scoring": "token_probs", "token_reduce": reduce, "candidates": list(template.candidates),
                  "token_probs": probs[i], "token_values": values[i], "forward_passes": template.slots},
        ))
    return responses


def token_values(response: LVLMResponse) -> list[float] | None:
    """The reduced slot values of a token_probs answer, or None for a generated one."""
    found = response.meta.get("token_values") if response.meta.get("scoring") == "token_probs" else None
    if isinstance(found, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in found):
        return [float(v) for v in found]
    return None


def scoring_settings(scoring: str, reduce: str) -> dict[str, Any]:
    """The generation settings a scoring mode adds (none for ``generate``: the cache keys and
    provenance of generated answers stay as they were before token_probs existed)."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring={scoring!r}: expected one of {', '.join(SCORINGS)}")
    if reduce not in TOKEN_REDUCES:
        raise ValueError(f"token_reduce={reduce!r}: expected one of {', '.join(TOKEN_REDUCES)}")
    return {} if scoring == "generate" else {"scoring": scoring, "token_reduce": reduce}


def split_scored(requests: Sequence[LVLMRequest], scoring: str) -> tuple[list[int], list[int]]:
    """(indices answered from token probabilities, indices generated): a request is scored when
    the backend's scoring is token_probs and it carries a template (stage-1 analyses do not)."""
    scored = [i for i, r in enumerate(requests) if scoring == "token_probs" and r.template is not None]
    chosen = set(scored)
    return scored, [i for i in range(len(requests)) if i not in chosen]
