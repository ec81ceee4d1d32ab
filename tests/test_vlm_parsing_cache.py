"""The stage-2 parser (property-based) and the response cache."""

from __future__ import annotations

import json
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from rgvlm.vlm.base import LVLMRequest, LVLMResponse
from rgvlm.vlm.cache import CachedClient, ResponseCache, request_key
from rgvlm.vlm.parsing import ERRORS, parse_scores

scores_lists = st.lists(st.integers(0, 10), min_size=1, max_size=40)
wrappers = st.sampled_from([
    "{}", "```json\n{}\n```", "Here are the scores:\n{}\nThat is all.", "```\n{}\n```", "Analysis done. {}",
])


@given(scores_lists, wrappers)
def test_valid_answers_parse_back_exactly(scores, wrapper):
    text = wrapper.format(json.dumps({"scores": scores}))
    parsed = parse_scores(text, len(scores))
    assert parsed.ok and list(parsed.scores) == scores


@given(scores_lists, st.integers(-3, 3).filter(lambda d: d != 0))
def test_wrong_count_is_rejected(scores, delta):
    expected = len(scores) + delta
    if expected < 0:
        return
    parsed = parse_scores(json.dumps({"scores": scores}), expected)
    assert not parsed.ok and parsed.error == "wrong_count"


@given(scores_lists, st.data())
def test_out_of_range_or_fractional_is_rejected(scores, data):
    index = data.draw(st.integers(0, len(scores) - 1))
    bad = data.draw(st.one_of(st.integers(11, 1000), st.integers(-1000, -1), st.floats(0.1, 9.9).filter(lambda f: f != int(f))))
    scores = [*scores[:index], bad, *scores[index + 1:]]
    parsed = parse_scores(json.dumps({"scores": scores}), len(scores))
    assert not parsed.ok and parsed.error in ("out_of_range", "not_integer")


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(0, 20))
def test_arbitrary_text_never_raises_and_never_guesses(text, expected):
    parsed = parse_scores(text, expected)
    if parsed.ok:
        assert len(parsed.scores) == expected and all(0 <= s <= 10 for s in parsed.scores)
    else:
        assert parsed.error in ERRORS


def test_two_answers_in_one_text_are_not_guessed_between():
    text = '{"scores": [1, 2]} or maybe {"scores": [3, 4]}'
    assert parse_scores(text, 2).error == "ambiguous"


class CountingClient:
    backend, model = "scripted", "counter"

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def generation_settings(self):
        return {"noise": 0}

    def generate(self, requests):
        with self.lock:
            self.calls += len(requests)
        return [LVLMResponse(text=f"answer to {r.prompt}", prompt_tokens=3, completion_tokens=2) for r in requests]


def test_cache_answers_once_and_keys_on_content(tmp_path):
    client = CountingClient()
    cached = CachedClient(client, ResponseCache(tmp_path), chunk_size=2)
    requests = [LVLMRequest(prompt=f"p{i}", images=(bytes([i]),)) for i in range(5)]
    first = cached.generate(requests)
    again = CachedClient(client, ResponseCache(tmp_path)).generate(requests)
    assert client.calls == 5 and [a.text for a in again] == [a.text for a in first]
    assert cached.usage.as_dict() == {"lvlm_calls": 5, "cache_hits": 0, "prompt_tokens": 15, "completion_tokens": 10,
                                      "cache_corrupt": 0}
    other_image = LVLMRequest(prompt="p0", images=(b"\xff",))
    assert request_key("scripted", "counter", {}, other_image) != request_key("scripted", "counter", {}, requests[0])
    assert request_key("scripted", "counter", {"noise": 1}, requests[0]) != request_key("scripted", "counter", {}, requests[0])
    assert len(ResponseCache(tmp_path)) == 5


def test_a_crash_keeps_every_answered_chunk(tmp_path):
    class Crashing(CountingClient):
        def generate(self, requests):
            if self.calls >= 4:
                raise RuntimeError("killed")
            return super().generate(requests)

    client = Crashing()
    requests = [LVLMRequest(prompt=f"p{i}") for i in range(8)]
    try:
        CachedClient(client, ResponseCache(tmp_path), chunk_size=2).generate(requests)
    except RuntimeError:
        pass
    assert len(ResponseCache(tmp_path)) == 4
    resumed = CountingClient()
    CachedClient(resumed, ResponseCache(tmp_path), chunk_size=2).generate(requests)
    assert resumed.calls == 4  # only what the crash left unanswered
