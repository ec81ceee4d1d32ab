"""Reading the LVLM's stage-2 answer: one integer score from 0 to 10 per action, as JSON.

The parser never guesses and never raises: for any text it returns either the scores or a
failure with a reason, so the caller can re-ask and count it. An answer is accepted only if
every JSON object with a ``scores`` key in it (fenced or bare, anywhere in the text) holds the
same value, and that value is a list of exactly the expected number of integers in 0..10.

Failure reasons: ``unparseable`` (no such object, or the text is not text), ``ambiguous``
(several candidates that disagree: a fenced example and the real answer, a duplicated key, a
prompt echo), ``wrong_count``, ``out_of_range``, ``not_integer`` (fractions, exponent
notation, strings, booleans), ``not_finite`` (``NaN``, ``Infinity``) and ``too_long``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

SCORE_MIN, SCORE_MAX = 0, 10
# Far above any real answer (stage 2 asks for a few hundred tokens); bounds the scanner's work,
# which grows with the number of brackets times the nesting depth.
MAX_ANSWER_CHARS = 32_000
ERRORS = ("unparseable", "ambiguous", "wrong_count", "out_of_range", "not_integer", "not_finite", "too_long")
# An integer written as one: "7", "-0", "7.0". "7e0" is left out: the returned value must be
# spelt in the answer, never recomputed from it.
_INTEGER_LITERAL = re.compile(r"-?\d+(?:\.0+)?")


@dataclass(frozen=True)
class Number:
    """A JSON number kept exact: Python's ``int`` refuses more than 4300 digits and ``float``
    turns ``1e400`` into infinity, and both would either raise or silently change the value."""

    value: Decimal | None  # None for the non-finite constants NaN / Infinity / -Infinity
    literal: str = field(compare=False)

    def __repr__(self) -> str:
        return self.literal if len(self.literal) <= 24 else f"{self.literal[:20]}...({len(self.literal)} chars)"


class _Object(dict):
    """A JSON object that remembers keys given twice with different values (JSON's own rule,
    the last one wins, would pick one silently)."""

    conflicting: frozenset[str] = frozenset()


def _object_hook(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    conflicting = set()
    for key, value in pairs:
        if key in obj and obj[key] != value:
            conflicting.add(key)
        obj[key] = value
    obj.conflicting = frozenset(conflicting)
    return obj


_DECODER = json.JSONDecoder(
    parse_int=lambda s: Number(Decimal(s), s),
    parse_float=lambda s: Number(Decimal(s), s),
    parse_constant=lambda s: Number(None, s),
    object_pairs_hook=_object_hook,
)


def json_values(text: str, starts: str = "{") -> list[Any]:
    """Every top-level JSON value in ``text`` that begins with one of ``starts`` (``"{"``,
    ``"["`` or both), fenced or bare, in order; values nested in another are not listed
    separately. Numbers are :class:`Number`, objects are dicts. Never raises."""
    found = []
    index = 0
    while True:
        positions = [p for p in (text.find(c, index) for c in starts) if p >= 0]
        if not positions:
            return found
        start = min(positions)
        try:
            value, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):  # invalid JSON, or nested deeper than Python recurses
            index = start + 1
            continue
        found.append(value)
        index = end


def distinct(values: list[Any]) -> list[Any]:
    """``values`` without repeats (equality, not identity; values need not be hashable)."""
    unique: list[Any] = []
    for value in values:
        if all(value != seen for seen in unique):
            unique.append(value)
    return unique


@dataclass(frozen=True)
class ParsedScores:
    """``scores`` when the answer is valid, else ``error`` says why (one of :data:`ERRORS`)."""

    scores: tuple[int, ...] | None
    error: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.scores is not None

    @property
    def value(self) -> tuple[int, ...] | None:
        """The scores, under the name the re-ask loop reads (:class:`rgvlm.rewards.queries.Parsed`)."""
        return self.scores


def _score(value: Any) -> tuple[int | None, str, str]:
    """(score, error, detail) of one list item."""
    if not isinstance(value, Number):
        return None, "not_integer", f"score {value!r} is not a number"
    if value.value is None:
        return None, "not_finite", f"score {value!r} is not a finite number"
    if not SCORE_MIN <= value.value <= SCORE_MAX:
        return None, "out_of_range", f"score {value!r} is outside {SCORE_MIN}..{SCORE_MAX}"
    if not _INTEGER_LITERAL.fullmatch(value.literal):
        return None, "not_integer", f"score {value!r} is not written as an integer"
    return int(value.value), "", ""


def parse_json_list(text: Any, key: str, expected: int, read_item: Callable[[Any], tuple[Any, str, str]],
                    counted: tuple[str, str]) -> tuple[tuple | None, str | None, str]:
    """``(values, None, "")`` for the list under ``key`` of the answer's JSON object, each item read
    by ``read_item`` (its value, or None and the error and detail), when there are ``expected`` of
    them; else ``(None, error, detail)``. ``counted`` names the items and what they are for in the
    wrong-count detail ("scores", "actions"). Never raises, never guesses (the module docstring)."""
    if not isinstance(text, str):
        return None, "unparseable", f"the answer is a {type(text).__name__}, not text"
    if len(text) > MAX_ANSWER_CHARS:
        return None, "too_long", f"{len(text)} characters, more than {MAX_ANSWER_CHARS}"
    objects = [o for o in json_values(text) if isinstance(o, dict) and key in o]
    if not objects:
        return None, "unparseable", f"no JSON object with a '{key}' list"
    if any(key in o.conflicting for o in objects):
        return None, "ambiguous", f"a JSON object gives '{key}' twice, with different values"
    candidates = distinct([o[key] for o in objects])
    if len(candidates) > 1:
        return None, "ambiguous", f"{len(candidates)} different '{key}' values in one answer"
    items = candidates[0]
    if not isinstance(items, list):
        return None, "unparseable", f"'{key}' is a {type(items).__name__}, not a list"
    values = []
    for item in items:  # before the count: a non-finite or absurd value is the worse news
        value, error, detail = read_item(item)
        if value is None:
            return None, error, detail
        values.append(value)
    if len(values) != expected:
        return None, "wrong_count", f"{len(values)} {counted[0]} for {expected} {counted[1]}"
    return tuple(values), None, ""


def parse_scores(text: Any, expected: int) -> ParsedScores:
    """Parse ``{"scores": [s_1, ..., s_expected]}`` out of an answer (see the module docstring)."""
    return ParsedScores(*parse_json_list(text, "scores", expected, _score, ("scores", "actions")))
