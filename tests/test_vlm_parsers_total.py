"""Every answer parser is total: any text gives a value or a counted failure, never an exception;
a value is always spelt in the answer; candidates that disagree are ``ambiguous``, never guessed.

Covers the RG-VLM stage-2 score parser, the ERL-VLM rating parser, the RL-VLM-F preference
parser and the VLM-CaR decomposition and program extractors, on arbitrary text and on answers
assembled from near-misses (non-finite numbers, huge integers, nested and duplicated JSON,
fences in every position, unicode digits, prompt echoes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rgvlm.methods.erl_vlm import parse_rating
from rgvlm.methods.rl_vlm_f import parse_preference
from rgvlm.methods.vlm_car import normalise_subtask, parse_decomposition, parse_program
from rgvlm.vlm.parsing import ERRORS, MAX_ANSWER_CHARS, parse_scores

FAST = settings(max_examples=200, deadline=None)
THREE = ("Bad", "Average", "Good")
PROMPTS = Path(__file__).parents[1] / "prompts"
STAGE2_PROMPT = (PROMPTS / "rg_vlm_stage2.txt").read_text()
DECOMPOSE_PROMPT = (PROMPTS / "vlm_car_decompose.txt").read_text()

# Pieces an LVLM answer is made of; near-misses of each parser's format among them.
NEAR_MISSES = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 5000, "1" + "0" * 400, "3.5", "7e0", "٣", "３", "true",
    "null", '"5"', "[]", "{}", "{", "}", "[", "]", ",", "```", "```json", "```python", "\n", " ",
    "Rating:", "Preference:", "Good", "bad", "cannot tell", "-1", "0", "1", "2", "def check(obs):", "return True",
]
prose = st.text(st.characters(codec="utf-8"), max_size=40)


def score_list(values: list) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def scores_object(values: list) -> str:
    return '{"scores": ' + score_list(values) + "}"


def fenced(text: str, language: str = "json") -> str:
    return f"```{language}\n{text}\n```"


piece = st.one_of(
    prose,
    st.sampled_from(NEAR_MISSES),
    st.lists(st.integers(0, 10), max_size=5).map(scores_object),
    st.lists(st.sampled_from(["NaN", "Infinity", "1e400", "9" * 4400, "-0", "10.0", "2.50", "٣"]), min_size=1,
             max_size=3).map(scores_object),
    st.lists(st.integers(0, 10), max_size=4).map(lambda s: '{"answer": ' + scores_object(s) + "}"),
    st.tuples(st.lists(st.integers(0, 10), max_size=3), st.lists(st.integers(0, 10), max_size=3)).map(
        lambda ab: '{"scores": ' + score_list(ab[0]) + ', "scores": ' + score_list(ab[1]) + "}"),
    st.lists(st.integers(0, 10), max_size=4).map(lambda s: fenced(scores_object(s))),
    st.sampled_from(THREE).map(lambda c: f"Rating: {c}"),
    st.sampled_from(["0", "1", "-1", "2", "cannot tell", "١"]).map(lambda v: f"Preference: {v}"),
    st.lists(st.sampled_from(["open the red door", "put the red key next to the blue ball", ""]), max_size=3).map(json.dumps),
    st.sampled_from(["return True", "return obs.is_open('red')", "return (", "pass"]).map(
        lambda body: fenced(f"def check(obs):\n    {body}", "python")),
    st.just(STAGE2_PROMPT),
    st.just(DECOMPOSE_PROMPT),
    st.integers(1, 200).map(lambda n: "{" * n),
    st.integers(1, 200).map(lambda n: "[" * n + "]" * n),
)
answers = st.one_of(st.text(max_size=300), st.lists(piece, max_size=6).map("".join),
                    st.lists(piece, max_size=6).map("\n".join))


def check_scores(text: str) -> None:
    for expected in (0, 1, 2, 3, 4, 5):
        parsed = parse_scores(text, expected)
        if parsed.ok:
            assert len(parsed.scores) == expected
            spelt = r"\[\s*" + r"\s*,\s*".join(rf"-?{s}(?:\.0+)?" for s in parsed.scores) + r"\s*\]"
            assert re.search(spelt, text), (text, parsed)
        else:
            assert parsed.error in ERRORS, parsed


@FAST
@given(answers)
def test_every_parser_is_total_and_returns_only_what_the_answer_says(text):
    check_scores(text)
    rating = parse_rating(text, THREE)
    if rating.ok:
        assert THREE[rating.value].lower() in text.lower()
    else:
        assert rating.error in ("unparseable", "ambiguous", "too_long", "unknown_class")
    preference = parse_preference(text)
    if preference.ok:
        assert (str(preference.value) in text) or (preference.value == -1 and "cannot tell" in text.lower())
    else:
        assert preference.error in ("unparseable", "ambiguous", "too_long", "invalid_value")
    decomposition = parse_decomposition(text)
    if decomposition.ok:
        assert all(subtask in normalise_subtask(text) for subtask in decomposition.value) or "\\" in text
    else:
        assert decomposition.error in ("unparseable", "ambiguous", "too_long", "not_a_list", "empty", "too_many",
                                       "not_strings")
    program = parse_program(text)
    if program.ok:
        assert program.value.strip("\n") in text
    else:
        assert program.error in ("unparseable", "ambiguous", "syntax", "no_function", "too_long")


@FAST
@given(st.lists(st.integers(0, 10), min_size=1, max_size=8), st.lists(st.integers(0, 10), min_size=1, max_size=8),
       prose, st.sampled_from(["fence-first", "fence-last", "both-fenced", "bare"]))
def test_disagreeing_score_candidates_are_ambiguous_in_any_position(first, second, between, layout):
    if first == second:
        second = [*second[:-1], (second[-1] + 1) % 11]
    a, b = scores_object(first), scores_object(second)
    text = {"fence-first": fenced(a) + between + b, "fence-last": a + between + fenced(b),
            "both-fenced": fenced(a) + between + fenced(b), "bare": a + " " + between + " " + b}[layout]
    for expected in {len(first), len(second)}:
        assert parse_scores(text, expected).error == "ambiguous"


@FAST
@given(st.sampled_from(THREE), st.sampled_from(THREE), prose)
def test_disagreeing_ratings_are_ambiguous_and_repeats_count_once(first, second, between):
    text = fenced(f"Rating: {first}", "") + "\n" + between.replace("\n", " ") + "\nRating: " + second
    parsed = parse_rating(text, THREE)
    if first == second:
        assert parsed.value == THREE.index(first)
    else:
        assert parsed.error == "ambiguous"


def test_fenced_example_before_the_real_answer_is_never_scored():
    text = 'For example:\n```json\n{"scores": [10, 10, 10]}\n```\nMy answer: {"scores": [1, 2, 3]}'
    assert parse_scores(text, 3).error == "ambiguous"
    # The same answer repeated (a fence and a plain copy) is one candidate.
    assert parse_scores(fenced(scores_object([1, 2, 3])) + "\n" + scores_object([1, 2, 3]), 3).scores == (1, 2, 3)
    echo = STAGE2_PROMPT + '\n{"scores": [4, 5]}'
    assert parse_scores(echo, 2).scores == (4, 5)  # the prompt's own example is not JSON
    example = DECOMPOSE_PROMPT + '\n["open the blue door"]'
    assert parse_decomposition(example).error == "ambiguous"
    two = fenced("def check(obs):\n    return True", "python") + fenced("def check(obs):\n    return False", "python")
    assert parse_program(two).error == "ambiguous"


def test_near_misses_are_named_failures():
    cases = {
        '{"scores": [1, NaN]}': "not_finite", '{"scores": [1, Infinity]}': "not_finite",
        '{"scores": [1, -Infinity]}': "not_finite", '{"scores": [1, 1e400]}': "out_of_range",
        '{"scores": [1, ' + "9" * 5000 + "]}": "out_of_range", '{"scores": [1, 7e0]}': "not_integer",
        '{"scores": [1, 2.5]}': "not_integer", '{"scores": [1, "٣"]}': "not_integer",
        '{"scores": [1, ٣]}': "unparseable", '{"scores": [1, 2], "scores": [3, 4]}': "ambiguous",
        '{"result": {"scores": [1, 2]}}': "unparseable", "{" * 5000: "unparseable",
        "x" * (MAX_ANSWER_CHARS + 1): "too_long",
    }
    for text, error in cases.items():
        assert parse_scores(text, 2).error == error, text[:60]
    assert parse_scores('{"scores": [1.0, -0]}', 2).scores == (1, 0)
    assert parse_scores(None, 2).error == "unparseable"
    assert parse_decomposition('["a", ' + "1" * 5000 + "]").error == "not_strings"
    assert parse_decomposition("[" * 3000 + "]" * 3000).error in ("unparseable", "too_long", "not_strings")
    assert parse_program("```python\ndef check(obs):\n    return " + "(" * 5000 + ")" * 5000 + "\n```").error == "syntax"
    assert parse_preference("Preference: １").error == "invalid_value"
    assert parse_rating(None, THREE).error == "unparseable"
