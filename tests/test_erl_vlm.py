"""ERL-VLM with the scripted annotator: the parser, the scripted ratings, labelling end to end,
the cache, determinism and the config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgvlm.methods.erl_vlm import (
    ERLVLMConfig,
    RatingTruth,
    config_from_params,
    label_erl_vlm,
    parse_rating,
)
from rgvlm.params import ParamError
from rgvlm.rewards.reward_model import load_reward_model, save_reward_model
from rgvlm.rewards.segments import SegmentFacts
from rgvlm.vlm.base import LVLMRequest
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise

CLEAN = ScriptedNoise(score_sd=0.0, misattribution=0.0, malformed_rate=0.0)
THREE = ("Bad", "Average", "Good")
FAST = ERLVLMConfig(num_queries=150, segment_length=16, train_steps=60, batch_size=32)


def mission_table(dataset) -> torch.Tensor:
    """A stand-in for the sentence-encoder table: one fixed random vector per mission and slot."""
    return torch.as_tensor(np.random.default_rng(0).normal(size=(len(dataset.missions), 6, 384)).astype(np.float32))


def test_parse_rating_is_strict():
    assert parse_rating("Rating: Good", THREE).value == 2
    assert parse_rating("average", THREE).value == 1
    assert parse_rating("**Rating:** Bad.", THREE).value == 0
    assert parse_rating("The agent opens the door.\nRating: Good", THREE).value == 2
    assert parse_rating("Rating: very good", ("Very bad", "Bad", "Good", "Very good")).value == 3
    unknown = parse_rating("Rating: Excellent", THREE)
    assert not unknown.ok and unknown.error == "unknown_class" and "Excellent" in unknown.detail
    assert parse_rating("The agent does well.\nIt opens a door.", THREE).error == "unparseable"
    assert parse_rating("Rating: Good\nRating: Bad", THREE).error == "ambiguous"
    assert parse_rating("Rating: Good\n**rating:** good.", THREE).value == 2  # a repeat is one rating
    assert parse_rating("", THREE).error == "unparseable"
    assert parse_rating("Good or Average", THREE).error == "unknown_class"


def facts(completed, length=16, offset=0, completions=()):
    return SegmentFacts(tuple(completed), offset, length, tuple(completions))


def test_scripted_ratings_follow_the_latent_value():
    rng = np.random.default_rng(0)
    idle = facts([0] * 16)
    done = facts([0] * 10 + [1] + [0] * 5, completions=((11, "open the door"),))
    # A completion just after the segment: one or all three of its approach steps lie inside.
    one_approach = facts([0] * 16 + [0, 0, 1], length=16)
    three_approach = facts([0] * 16 + [1], length=16)
    assert RatingTruth(2, idle, THREE).scripted_answer(rng, CLEAN) == "Rating: Bad"
    assert RatingTruth(2, done, THREE).scripted_answer(rng, CLEAN) == "Rating: Good"
    assert RatingTruth(2, one_approach, THREE).scripted_answer(rng, CLEAN) == "Rating: Average"
    assert RatingTruth(2, three_approach, THREE).scripted_answer(rng, CLEAN) == "Rating: Good"
    assert RatingTruth(2, done, ("Bad", "Good")).scripted_answer(rng, CLEAN) == "Rating: Good"
    assert "Action 11 completes the sub-task 'open the door'" in RatingTruth(1, done, THREE).scripted_answer(rng, CLEAN)
    # Through the annotator, and every malformed answer is rejected by the parser.
    annotator = ScriptedAnnotator(ScriptedNoise(malformed_rate=1.0))
    answers = annotator.generate([LVLMRequest(prompt=f"q{i}", annotation=RatingTruth(2, done, THREE)) for i in range(30)])
    assert all(not parse_rating(a.text, THREE).ok for a in answers)
    # Noise flips some ratings of an idle segment, not most.
    noisy = ScriptedNoise(score_sd=1.0, malformed_rate=0.0)
    ratings = [RatingTruth(2, idle, THREE).rating(np.random.default_rng(i), noisy) for i in range(200)]
    assert 0.5 < ratings.count(0) / 200 < 1.0


@pytest.fixture(scope="module")
def erl_run(tiny_dataset, tmp_path_factory):
    cache = tmp_path_factory.mktemp("erl-cache")
    client = CachedClient(ScriptedAnnotator(), ResponseCache(cache))
    table = mission_table(tiny_dataset)
    result, stats, model = label_erl_vlm(tiny_dataset, client, client, FAST, needs_images=False, mission_table=table)
    return {"cache": cache, "client": client, "table": table, "result": result, "stats": stats, "model": model}


def test_learned_rewards_favour_completing_steps(tiny_dataset, erl_run):
    result, stats = erl_run["result"], erl_run["stats"]
    completed = tiny_dataset.progress > tiny_dataset.progress_before
    assert result.reward_set == "erl_vlm" and result.rewards.shape == (tiny_dataset.num_transitions,)
    assert 0.0 <= result.rewards.min() and result.rewards.max() <= 1.0
    assert result.rewards[completed].mean() > result.rewards[~completed].mean() + 0.2
    assert stats["queries"] == 150 and stats["labelled"] + stats["dropped"] == 150
    assert sum(stats["answers_per_class"].values()) == stats["labelled"]
    assert set(stats["answers_per_class"]) == set(THREE) and min(stats["answers_per_class"].values()) > 0
    assert stats["reward_model"]["train_accuracy"] > 0.5 and stats["reward_model"]["final_loss"] is not None
    assert result.provenance["method"] == "erl_vlm" and result.provenance["lvlm"]["backend"] == "scripted"
    assert result.provenance["config"]["num_classes"] == 3 and "prompt_dir" not in result.provenance["config"]


def test_rerun_asks_nothing_and_is_identical(tiny_dataset, erl_run):
    calls = erl_run["client"].usage.lvlm_calls
    assert calls >= 2 * 150
    again = CachedClient(ScriptedAnnotator(), ResponseCache(erl_run["cache"]))
    rerun, stats, _ = label_erl_vlm(tiny_dataset, again, again, FAST, needs_images=False,
                                    mission_table=erl_run["table"])
    assert again.usage.lvlm_calls == 0 and again.usage.cache_hits == calls
    np.testing.assert_array_equal(rerun.rewards, erl_run["result"].rewards)
    assert stats["answers_per_class"] == erl_run["stats"]["answers_per_class"]


def test_saved_model_reproduces_the_rewards(tiny_dataset, erl_run, tmp_path):
    from rgvlm.rewards.reward_model import TransitionInputs

    save_reward_model(tmp_path / "reward_model.pt", erl_run["model"], {"method": "erl_vlm"})
    model, extra = load_reward_model(tmp_path / "reward_model.pt")
    steps = np.arange(tiny_dataset.num_transitions)
    with torch.no_grad():
        rewards = model.reward(*TransitionInputs(tiny_dataset, erl_run["table"])(steps)).numpy()
    np.testing.assert_allclose(rewards, erl_run["result"].rewards, atol=1e-5)
    assert extra["method"] == "erl_vlm"


def test_malformed_answers_are_reasked_then_dropped(tiny_dataset):
    config = ERLVLMConfig(num_queries=20, train_steps=2, max_reasks=2)
    always_bad = ScriptedAnnotator(ScriptedNoise(malformed_rate=1.0))
    result, stats, _ = label_erl_vlm(tiny_dataset, ScriptedAnnotator(CLEAN), always_bad, config, needs_images=False,
                                     mission_table=mission_table(tiny_dataset))
    assert stats["dropped"] == 20 and stats["labelled"] == 0 and stats["reasks"] == 40
    assert sum(stats["stage2_errors"].values()) == 60
    assert np.all(result.rewards == 0.0)


def test_frames_are_sent(tiny_dataset):
    seen = []

    class Recording(ScriptedAnnotator):
        def generate(self, requests):
            seen.extend(len(r.images) for r in requests)
            return super().generate(requests)

    config = ERLVLMConfig(num_queries=6, segment_length=8, frame_stride=4, tile_size=4, train_steps=1)
    annotator = Recording(CLEAN)
    label_erl_vlm(tiny_dataset, annotator, annotator, config, needs_images=True,
                  mission_table=mission_table(tiny_dataset))
    assert len(seen) == 12 and all(2 <= n <= 3 for n in seen)


def test_config_validation_names_the_key():
    assert config_from_params({}) == ERLVLMConfig()
    assert config_from_params({"num_classes": 2, "loss": "ce"}).class_names == ("Bad", "Good")
    for raw, key in [
        ({"num_clases": 3}, "erl_vlm.num_clases"),
        ({"num_classes": 7}, "erl_vlm.num_classes"),
        ({"loss": "mse"}, "erl_vlm.loss"),
        ({"stratified": "yes"}, "erl_vlm.stratified"),
        ({"temperature": 0}, "erl_vlm.temperature"),
        ({"num_queries": True}, "erl_vlm.num_queries"),
        ({"segment_length": 0}, "erl_vlm.segment_length"),
        ({"max_reasks": -1}, "erl_vlm.max_reasks"),
        ({"prompt_dir": "/tmp"}, "erl_vlm.prompt_dir"),
    ]:
        with pytest.raises(ParamError) as error:
            config_from_params(raw)
        assert error.value.key == key, raw
    with pytest.raises(ParamError, match="erl_vlm"):
        config_from_params(["num_queries"])
