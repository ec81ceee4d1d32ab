"""Reading the LVLM's stage-2 answer: one integer score from 0 to 10 per action, as JSON.

The parser never guesses: an answer is accepted only if it holds exactly one JSON object
with a ``scores`` list of exactly the expected number of integers, each in 0..10.
Anything else is reported with the reason, so the caller can re-ask and count it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

SCORE_MIN, SCORE_MAX = 0, 10
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class ParsedScores:
    """``scores`` when the answer is valid, else ``error`` says why (one of
    ``unparseable``, ``wrong_count``, ``out_of_range``, ``not_integer``)."""

    scores: tuple[int, ...] | None
    error: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.scores is not None


def _json_objects(text: str) -> list[object]:
    """Every top-level JSON object found in ``text`` (inside code fences or bare)."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] or [text]
    decoder = json.JSONDecoder()
    found = []
    for candidate in candidates:
        index = 0
        while True:
            start = candidate.find("{", index)
            if start < 0:
                break
            try:
                obj, end = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                index = start + 1
                continue
            found.append(obj)
            index = end
    return found


def parse_scores(text: str, expected: int) -> ParsedScores:
    """Parse ``{"scores": [s_1, ..., s_expected]}`` out of an answer."""
    objects = [o for o in _json_objects(text) if isinstance(o, dict) and "scores" in o]
    if len(objects) != 1:
        reason = "no JSON object with a 'scores' list" if not objects else f"{len(objects)} JSON objects with 'scores'"
        return ParsedScores(None, "unparseable", reason)
    scores = objects[0]["scores"]
    if not isinstance(scores, list):
        return ParsedScores(None, "unparseable", f"'scores' is a {type(scores).__name__}, not a list")
    if len(scores) != expected:
        return ParsedScores(None, "wrong_count", f"{len(scores)} scores for {expected} actions")
    values = []
    for value in scores:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            return ParsedScores(None, "not_integer", f"score {value!r} is not an integer")
        if not SCORE_MIN <= int(value) <= SCORE_MAX:
            return ParsedScores(None, "out_of_range", f"score {value!r} is outside {SCORE_MIN}..{SCORE_MAX}")
        values.append(int(value))
    return ParsedScores(tuple(values))
