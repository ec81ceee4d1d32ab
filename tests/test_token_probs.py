"""Token-probability scoring (rgvlm.vlm.token_probs): the mechanics on tiny local models built
offline (tests/support/tiny_models.py), the cache, the scripted annotator, RG-VLM and ERL-VLM
end to end, the OpenAI backend's logprobs against a local HTTP server, and the params."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from PIL import Image  # noqa: E402

from rgvlm.methods.rg_vlm import RGVLMConfig, label_rg_vlm  # noqa: E402
from rgvlm.params import ParamError, labelling_config  # noqa: E402
from rgvlm.rewards.registry import LVLM_SECTION  # noqa: E402
from rgvlm.vlm.base import LVLMError, LVLMRequest  # noqa: E402
from rgvlm.vlm.cache import CachedClient, ResponseCache, request_key  # noqa: E402
from rgvlm.vlm.parsing import parse_scores  # noqa: E402
from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise  # noqa: E402
from rgvlm.vlm.token_probs import AnswerTemplate, ChoiceQuery, reduce_distribution  # noqa: E402
from tests.test_vlm_openai import FakeServer, ok  # noqa: E402

SCORES = tuple(str(n) for n in range(11))
RATINGS = ("Bad", "Average", "Good")


def png(seed: int, size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def requests(template: AnswerTemplate | None = None) -> list[LVLMRequest]:
    return [LVLMRequest("Score each action of the agent." + " Answer in JSON." * i,
                        images=tuple(png(10 * i + j) for j in range(i + 1)), max_new_tokens=4, template=template)
            for i in range(3)]


@pytest.fixture(scope="module", params=["llava", "idefics3", "qwen2_vl"])
def tiny(request, tmp_path_factory):
    from rgvlm.vlm.transformers_backend import TransformersClient
    from tests.support.tiny_models import build_tiny_vlm

    path = build_tiny_vlm(request.param, tmp_path_factory.mktemp("tiny") / request.param)
    return TransformersClient(str(path), device="cpu", batch_size=16, max_new_tokens=4, scoring="token_probs")


# -- the general capability ----------------------------------------------------------------
def test_distributions_sum_to_one_and_multi_token_candidates_are_teacher_forced(tiny):
    import torch

    tok = tiny.tokenizer
    assert len(tok("10", add_special_tokens=False)["input_ids"]) >= 2  # multi-token candidates are exercised
    assert len(tok("Average", add_special_tokens=False)["input_ids"]) >= 2
    for candidates, prefix, terminator in [(SCORES, '{"scores": [', ","), (RATINGS, "Rating: ", "")]:
        queries = [ChoiceQuery(r, prefix, candidates, terminator) for r in requests()]
        for probs in tiny.candidate_probs(queries):
            assert len(probs) == len(candidates) and min(probs) >= 0 and math.isclose(sum(probs), 1.0, abs_tol=1e-9)
        # Each batched, padded row equals its candidate scored alone: the sum of its tokens' log-probs.
        query = queries[2]
        batched = tiny.candidate_logprobs([query])[0]
        context = tiny._prompt_text(query.request) + prefix.rstrip()
        n_context = int(tiny._inputs([context], query.request)["input_ids"].shape[1])
        for k in (len(candidates) - 1, 1):
            inputs = tiny._inputs([context + prefix[len(prefix.rstrip()):] + candidates[k] + terminator], query.request)
            with torch.inference_mode():
                logprobs = torch.log_softmax(tiny._model(**inputs).logits.float(), dim=-1)[0]
            ids = inputs["input_ids"][0]
            alone = sum(float(logprobs[t - 1, ids[t]]) for t in range(n_context, ids.shape[0]))
            assert ids.shape[0] - n_context >= 2 and batched[k] == pytest.approx(alone, abs=1e-4)


def test_argmax_equals_the_greedily_generated_token(tiny):
    """Candidates: every token of the vocabulary that spells itself back; the greedy first token
    is one of them unless it is special, and then it must be the distribution's argmax."""
    tok = tiny.tokenizer
    special = set(tok.all_special_ids)
    candidates = []
    for token_id in range(len(tok)):
        text = tok.decode([token_id])
        if token_id not in special and text.strip() and tok(text, add_special_tokens=False)["input_ids"] == [token_id]:
            candidates.append(text)
    candidates = tuple(dict.fromkeys(candidates))
    assert len(candidates) > 100
    asked = requests()
    greedy = tiny.generate([LVLMRequest(r.prompt, r.images, max_new_tokens=1) for r in asked])
    distributions = tiny.candidate_probs([ChoiceQuery(r, "", candidates) for r in asked])
    compared = 0
    for answer, probs in zip(greedy, distributions, strict=True):
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-9)
        if answer.text and any(c.strip() == answer.text for c in candidates):
            assert candidates[int(np.argmax(probs))].strip() == answer.text
            compared += 1
    if compared == 0 and all(not c.strip() == a.text for a in greedy for c in candidates):
        # Qwen2-VL's tiny random model starts every answer with a byte-fragment token ("\ufffd"),
        # which no candidate string can spell: nothing to compare.
        pytest.skip(f"greedy answers {[a.text for a in greedy]} are not among the candidates")
    assert compared >= 2


def test_templated_answers_always_parse_and_keep_their_distributions(tiny):
    template = AnswerTemplate.json_list("scores", 4, 0, 10)
    for answer in tiny.generate(requests(template) + [LVLMRequest("Describe the frames.", max_new_tokens=3)])[:3]:
        parsed = parse_scores(answer.text, 4)
        assert parsed.ok and answer.meta["scoring"] == "token_probs"
        probs = answer.meta["token_probs"]
        assert len(probs) == 4 and all(math.isclose(sum(p), 1.0, abs_tol=1e-6) for p in probs)
        for p, value, fill in zip(probs, answer.meta["token_values"], parsed.scores, strict=True):
            assert value == pytest.approx(sum(i * q for i, q in enumerate(p)), abs=1e-6)  # the expectation
            assert abs(fill - value) <= 0.5 + 1e-9  # the text holds the nearest score


def test_the_cache_keeps_the_probabilities_apart_from_generated_answers(tiny, tmp_path):
    asked = requests(AnswerTemplate(("Rating: ", ""), RATINGS))
    first = CachedClient(tiny, ResponseCache(tmp_path))
    answers = first.generate(asked)
    again = CachedClient(tiny, ResponseCache(tmp_path))
    cached = again.generate(asked)
    assert again.usage.lvlm_calls == 0 and again.usage.cache_hits == 3
    for a, b in zip(answers, cached, strict=True):
        assert b.meta["cached"] and b.text == a.text and b.meta["token_probs"] == a.meta["token_probs"]
    settings = tiny.generation_settings()
    assert settings["scoring"] == "token_probs"
    generate_settings = {k: v for k, v in settings.items() if k not in ("scoring", "token_reduce")}
    assert request_key(tiny.backend, tiny.model, settings, asked[0]) != request_key(
        tiny.backend, tiny.model, generate_settings, asked[0])


# -- the methods ----------------------------------------------------------------------------
def test_rg_vlm_with_a_tiny_local_model_has_no_parse_failure(tiny, tmp_path):
    from tests.conftest import TINY_DATASET, build_dataset

    if "llava" not in tiny.model:
        pytest.skip("one architecture is enough end to end")
    dataset = build_dataset(tmp_path / "data", {**TINY_DATASET, "ks": [1], "episodes_per_k": 2})
    stage1 = ScriptedAnnotator(ScriptedNoise(malformed_rate=0.0))
    result, stats = label_rg_vlm(dataset, stage1, tiny, RGVLMConfig(window_length=8, window_stride=8, max_reasks=0,
                                                                    tile_size=4, frame_stride=8))
    assert stats["stage2_errors"] == {} and stats["fallback_windows"] == 0
    assert stats["token_probs_windows"] == stats["windows"]
    assert np.all((result.rewards >= 0) & (result.rewards <= 1)) and np.unique(result.rewards).size > 3
    assert result.provenance["lvlm"]["scoring"] == "token_probs"


def test_scripted_token_probs_never_fail_and_follow_the_noise_model(tiny_dataset):
    noise = ScriptedNoise(malformed_rate=1.0)  # every generated answer would be malformed
    config = RGVLMConfig(window_length=8, window_stride=8, max_reasks=0)
    for reduce in ("expectation", "argmax"):
        annotator = ScriptedAnnotator(noise, scoring="token_probs", token_reduce=reduce)
        assert annotator.backend == "scripted" and annotator.model == "scripted-annotator"  # still not an LVLM
        result, stats = label_rg_vlm(tiny_dataset, ScriptedAnnotator(noise), annotator, config, needs_images=False)
        assert stats["fallback_windows"] == 0 and stats["stage2_errors"] == {}
        completed = tiny_dataset.progress > tiny_dataset.progress_before
        assert result.rewards[completed].mean() > result.rewards[~completed].mean() + 0.3
        if reduce == "argmax":
            assert set(np.round(result.rewards * 10, 6)) <= set(range(11))


def test_erl_vlm_reads_its_ratings_from_token_probs(tiny_dataset):
    from rgvlm.methods.erl_vlm import ERLVLMConfig, label_erl_vlm
    from tests.test_erl_vlm import mission_table

    annotator = ScriptedAnnotator(ScriptedNoise(malformed_rate=1.0), scoring="token_probs")
    _, stats, _ = label_erl_vlm(tiny_dataset, annotator, annotator, ERLVLMConfig(num_queries=30, train_steps=2),
                                needs_images=False, mission_table=mission_table(tiny_dataset))
    assert stats["labelled"] == 30 and stats["dropped"] == 0 and stats["token_probs_segments"] == 30


def test_reduce():
    assert reduce_distribution([0.5, 0.0, 0.5], (0.0, 1.0, 2.0), "expectation") == (1.0, 1)
    assert reduce_distribution([0.2, 0.3, 0.5], (0.0, 5.0, 10.0), "argmax") == (10.0, 2)
    template = AnswerTemplate.json_list("scores", 2, 0, 10)
    assert template.render(["3", "10"]) == json.dumps({"scores": [3, 10]})
    assert template.terminator(0) == "," and template.terminator(1) == "]"
    assert AnswerTemplate(("Rating: ", ""), RATINGS).terminator(0) == ""
    assert template.slot_of('{"scores": [3, ') == 1 and template.match('{"scores": [3, 10]}') == [3, 10]


# -- OpenAI: logprobs where the server offers them -------------------------------------------
def logprob_body(text: str, alternatives: dict[int, list[tuple[str, float]]]) -> bytes:
    tokens = [text[:12], *text[12:]]  # '{"scores": [' then one character a token
    content = [{"token": t, "logprob": -0.1, "top_logprobs": [{"token": a, "logprob": lp} for a, lp in
                                                               alternatives.get(i, [])]} for i, t in enumerate(tokens)]
    body = json.loads(ok(text)[2])
    body["choices"][0]["logprobs"] = {"content": content}
    return json.dumps(body).encode()


def test_openai_reads_top_logprobs_and_says_when_there_are_none():
    from rgvlm.vlm.openai_backend import OpenAIClient

    text = '{"scores": [7, 2]}'
    alternatives = {1: [("7", math.log(0.6)), (" 8", math.log(0.2)), ("x", math.log(0.1))],
                    4: [("2", math.log(0.5)), ("3", math.log(0.5))]}
    payloads = []

    def behaviour(payload, headers):
        payloads.append(payload)
        return 200, {"Content-Type": "application/json"}, logprob_body(text, alternatives)

    server = FakeServer(behaviour)
    try:
        client = OpenAIClient(server.base_url, "m", api_key_env=None, scoring="token_probs", top_logprobs=5)
        template = AnswerTemplate.json_list("scores", 2, 0, 10)
        answer = client.generate([LVLMRequest("score", template=template)])[0]
        assert payloads[-1]["logprobs"] is True and payloads[-1]["top_logprobs"] == 5
        probs = answer.meta["token_probs"]
        assert probs[0][7] == pytest.approx(0.75) and probs[0][8] == pytest.approx(0.25)
        assert answer.meta["token_values"] == pytest.approx([7.25, 2.5]) and answer.text == '{"scores": [7, 2]}'
        client.generate([LVLMRequest("analyse")])  # no template: no logprobs asked
        assert "logprobs" not in payloads[-1]
    finally:
        server.close()
    plain = FakeServer(lambda payload, headers: ok(text))
    try:
        client = OpenAIClient(plain.base_url, "m", api_key_env=None, scoring="token_probs")
        with pytest.raises(LVLMError, match="does not offer logprobs.*scoring: generate"):
            client.generate([LVLMRequest("score", template=AnswerTemplate.json_list("scores", 2, 0, 10))])
    finally:
        plain.close()


# -- params ---------------------------------------------------------------------------------
def test_bad_scoring_values_name_the_key_and_the_choices():
    assert labelling_config({}).scoring == "generate" and labelling_config({}).token_reduce == "expectation"
    assert labelling_config({"scoring": "token_probs", "token_reduce": "argmax"}).token_reduce == "argmax"
    for key, value, allowed in [("scoring", "logits", "generate, token_probs"),
                                ("token_reduce", "mean", "expectation, argmax"), ("top_logprobs", 0, "1..20")]:
        with pytest.raises(ParamError, match=f"{LVLM_SECTION}.{key}={value!r}.*{allowed}") as error:
            labelling_config({key: value})
        assert error.value.key == f"{LVLM_SECTION}.{key}"
    with pytest.raises(ValueError, match="scoring='logits'"):
        ScriptedAnnotator(scoring="logits")
