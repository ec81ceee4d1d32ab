"""A cached answer can never make a labelling run unrecoverable.

The cache is poisoned with every failure class (answers the parsers reject, and files that are
not answers at all); the rerun finishes, counts each class, re-asks under ``max_reasks`` (or
falls back), keeps the rejected answers (they were paid for), and a third run asks nothing.
"""

from __future__ import annotations

import json
import shutil

import pytest

from rgvlm.methods.erl_vlm import parse_rating
from rgvlm.methods.rg_vlm import RGVLMConfig, label_rg_vlm
from rgvlm.methods.rl_vlm_f import parse_preference
from rgvlm.methods.vlm_car import DECOMPOSE_NOTE, PROGRAM_NOTE, parse_decomposition, parse_program
from rgvlm.rewards.queries import ask_with_reasks, invalid_answer_note
from rgvlm.vlm.base import LVLMRequest, LVLMResponse
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.parsing import MAX_ANSWER_CHARS
from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise

CLEAN = ScriptedNoise(score_sd=0.0, misattribution=0.0, malformed_rate=0.0)
CONFIG = RGVLMConfig(window_length=8, window_stride=8)
# Answers a parser rejects, by the reason it gives.
POISON = {
    "not_finite": '{"scores": [NaN, 1, 1]}',
    "not_finite ": '{"scores": [Infinity, -Infinity]}',
    "out_of_range": '{"scores": [1e400, 1]}',
    "out_of_range ": '{"scores": [' + "9" * 5000 + "]}",
    "unparseable": '{"answer": {"scores": [1, 2]}}',
    "ambiguous": '{"scores": [1, 2], "scores": [3, 4]}',
    "ambiguous ": '```json\n{"scores": [10, 10]}\n```\nMy answer: {"scores": [0, 0]}',
    "unparseable ": '{"scores": [٣, ٣]}',
    "unparseable  ": 'Answer with JSON only, exactly 8 integers in action order: {{"scores": [s1, s2, ...]}}',
    "too_long": "x" * (MAX_ANSWER_CHARS + 1),
}
# Files that are not answers: set aside and asked again.
CORRUPT = [b'{"text": "cut sho', b'{"text": null, "prompt_tokens": 1, "completion_tokens": 1}', b"\xff\xfe\x00",
           b"[1, 2]", b'{"text": "x", "prompt_tokens": "3", "completion_tokens": 1}', b""]


class Counting(ScriptedAnnotator):
    def __init__(self, noise):
        super().__init__(noise)
        self.calls = 0

    def generate(self, requests):
        self.calls += len(requests)
        return super().generate(requests)


def run(dataset, cache_dir, config=CONFIG):
    backend = Counting(CLEAN)
    client = CachedClient(backend, ResponseCache(cache_dir))
    result, stats = label_rg_vlm(dataset, client, client, config, needs_images=False)
    return result, stats, backend.calls, client.usage


def test_rerun_after_every_failure_class_finishes(tiny_dataset, tmp_path):
    clean, _, _, _ = run(tiny_dataset, tmp_path / "cache")
    files = sorted((tmp_path / "cache").glob("*/*.json"))
    stage2 = [p for p in files if json.loads(p.read_text())["text"].startswith('{"scores"')]
    stage1 = [p for p in files if p not in stage2]
    assert len(stage2) >= len(POISON) and len(stage1) >= len(CORRUPT)
    for path, text in zip(stage2, POISON.values(), strict=False):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "text": text}))  # a paid-for answer the parser rejects
    for path, raw in zip(stage1[: len(CORRUPT) // 2] + stage2[len(POISON):], CORRUPT, strict=False):
        path.write_bytes(raw)  # not an answer at all
    poisoned = tmp_path / "poisoned"
    shutil.copytree(tmp_path / "cache", poisoned)

    result, stats, calls, usage = run(tiny_dataset, tmp_path / "cache")
    expected = {}
    for reason in POISON:
        expected[reason.strip()] = expected.get(reason.strip(), 0) + 1
    assert stats["stage2_errors"] == expected and stats["fallback_windows"] == 0
    assert usage.cache_corrupt == len(CORRUPT)
    assert calls == len(POISON) + len(CORRUPT)  # one re-ask per rejected answer, one per unreadable file
    assert (result.rewards == clean.rewards).all()
    assert len(list((tmp_path / "cache").glob("*/*.json.corrupt"))) == len(CORRUPT)

    # The rejected answers stay (paid for): the third run counts them again and asks nothing.
    again, stats_again, calls_again, _ = run(tiny_dataset, tmp_path / "cache")
    assert calls_again == 0 and stats_again["stage2_errors"] == expected
    assert (again.rewards == clean.rewards).all()

    # Without re-asks the poisoned windows fall back; still no exception.
    config = RGVLMConfig(window_length=8, window_stride=8, max_reasks=0)
    _, stats_fallback, _, _ = run(tiny_dataset, poisoned, config)
    assert stats_fallback["fallback_windows"] == len(POISON) and stats_fallback["stage2_errors"] == expected


class Poisoning:
    """First asks get a poisoned answer; re-asks (their prompt carries the reason) a good one."""

    backend, model = "scripted", "poisoning"

    def __init__(self, poison, good):
        self.poison, self.good, self.calls = poison, good, 0

    def generation_settings(self):
        return {}

    def generate(self, requests):
        self.calls += len(requests)
        return [LVLMResponse(text=self.good if "previous answer" in r.prompt else self.poison[int(r.prompt[1:])])
                for r in requests]


@pytest.mark.parametrize("name, parse, poison, good, value", [
    ("rating", lambda t: parse_rating(t, ("Bad", "Average", "Good")),
     ["Rating: Good\nRating: Bad", "```\nRating: Bad\n```\nRating: Good", "Rating: ٣", "x" * (MAX_ANSWER_CHARS + 1),
      "", "Rating: Excellent"], "Rating: Good", 2),
    ("preference", parse_preference,
     ["Preference: 0\nPreference: 1", "Preference: １", "Preference: NaN", "x" * (MAX_ANSWER_CHARS + 1), ""],
     "Preference: 1", 1),
], ids=["erl_vlm", "rl_vlm_f"])
def test_segment_methods_reask_poisoned_answers(tmp_path, name, parse, poison, good, value):
    requests = [LVLMRequest(prompt=f"q{i}") for i in range(len(poison))]
    parse_answer = lambda _, text: parse(text)  # noqa: E731
    note = lambda _, detail: invalid_answer_note(detail, "Answer in the format asked.")  # noqa: E731
    for attempt in range(2):
        backend = Poisoning(poison, good)
        client = CachedClient(backend, ResponseCache(tmp_path))
        answers = ask_with_reasks(client, requests, parse_answer, note, 2)
        assert answers.values == [value] * len(poison) and sum(answers.errors.values()) == answers.reasks == len(poison)
        assert backend.calls == (2 * len(poison) if attempt == 0 else 0)
        ask_with_reasks(CachedClient(Poisoning(poison, good), ResponseCache(tmp_path)), requests, parse_answer,
                        note, 0)  # no re-asks: dropped, never raised


@pytest.mark.parametrize("parse, note, poison, good", [
    (parse_decomposition, DECOMPOSE_NOTE,
     ['["a", NaN]', '["a", ' + "1" * 5000 + "]", '```json\n["example"]\n```\n["open the red door"]', "[" * 3000,
      '{"subtasks": ["a"], "subtasks": ["b"]}', "x" * (MAX_ANSWER_CHARS + 1)], '["open the red door"]'),
    (parse_program, PROGRAM_NOTE,
     ["```python\ndef check(obs):\n    return True\n```\n```python\ndef check(obs):\n    return False\n```",
      "```python\ndef check(obs):\n    return " + "(" * 5000 + ")" * 5000 + "\n```", "def check(obs) return", "\x00"],
     "```python\ndef check(obs):\n    return True\n```"),
], ids=["decomposition", "program"])
def test_vlm_car_reasks_poisoned_answers(tmp_path, parse, note, poison, good):
    requests = [LVLMRequest(prompt=f"q{i}", max_new_tokens=64) for i in range(len(poison))]
    parse_answer = lambda _, text: parse(text)  # noqa: E731
    reask_note = lambda _, detail: note.format(detail=detail)  # noqa: E731
    for attempt in range(2):
        backend = Poisoning(poison, good)
        client = CachedClient(backend, ResponseCache(tmp_path))
        answers = ask_with_reasks(client, requests, parse_answer, reask_note, 2)
        assert all(v is not None for v in answers.values) and answers.reasks == len(poison) and answers.failed == 0
        assert sum(answers.errors.values()) == len(poison)
        assert backend.calls == (2 * len(poison) if attempt == 0 else 0)
    answers = ask_with_reasks(CachedClient(Poisoning(poison, good), ResponseCache(tmp_path)), requests,
                              parse_answer, reask_note, 0)
    assert answers.values == [None] * len(poison) and answers.failed == len(poison)
