"""RL-VLM-F with the scripted annotator: the parser, the scripted preferences, labelling end to end,
cannot-tell answers, the cache, determinism and the config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgvlm.methods.rl_vlm_f import (
    CANNOT_TELL,
    PreferenceTruth,
    RLVLMFConfig,
    config_from_params,
    label_rl_vlm_f,
    parse_preference,
)
from rgvlm.params import ParamError
from rgvlm.rewards.segments import SegmentFacts
from rgvlm.vlm.base import LVLMRequest
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise

CLEAN = ScriptedNoise(score_sd=0.0, misattribution=0.0, malformed_rate=0.0)
FAST = RLVLMFConfig(num_queries=150, segment_length=16, ensemble_size=2, train_steps=60, batch_size=16)


def mission_table(dataset) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(0).normal(size=(len(dataset.missions), 6, 384)).astype(np.float32))


def test_parse_preference_is_strict():
    assert parse_preference("Preference: 0").value == 0
    assert parse_preference("1").value == 1
    assert parse_preference("**Preference:** -1.").value == CANNOT_TELL
    assert parse_preference("Preference: cannot tell").value == CANNOT_TELL
    assert parse_preference("Cannot tell").value == CANNOT_TELL
    assert parse_preference("Segment 1 opens the door.\nPreference: 1").value == 1
    assert parse_preference("Preference: 2").error == "invalid_value"
    assert parse_preference("Segment 0 is better").error == "invalid_value"
    assert parse_preference("Preference: 0\nPreference: 1").error == "ambiguous"
    assert parse_preference("Both look alike.\nHard to say.").error == "unparseable"


def test_scripted_preferences_follow_the_latent_values():
    rng = np.random.default_rng(0)
    idle = SegmentFacts((0,) * 16, 0, 16, ())
    done = SegmentFacts((0,) * 8 + (1,) + (0,) * 7, 0, 16, ((9, "pick up the key"),))
    assert PreferenceTruth(2, idle, done).scripted_answer(rng, CLEAN) == "Preference: 1"
    assert PreferenceTruth(2, done, idle).scripted_answer(rng, CLEAN) == "Preference: 0"
    assert PreferenceTruth(2, idle, idle).scripted_answer(rng, CLEAN) == "Preference: -1"
    description = PreferenceTruth(1, idle, done).scripted_answer(rng, CLEAN)
    assert description.startswith("Segment 0: No action") and "'pick up the key'" in description
    annotator = ScriptedAnnotator(ScriptedNoise(malformed_rate=1.0))
    answers = annotator.generate([LVLMRequest(prompt=f"q{i}", annotation=PreferenceTruth(2, idle, done))
                                  for i in range(30)])
    assert all(not parse_preference(a.text).ok for a in answers)


@pytest.fixture(scope="module")
def rl_run(tiny_dataset, tmp_path_factory):
    cache = tmp_path_factory.mktemp("rl-vlm-f-cache")
    client = CachedClient(ScriptedAnnotator(), ResponseCache(cache))
    table = mission_table(tiny_dataset)
    result, stats, model = label_rl_vlm_f(tiny_dataset, client, client, FAST, needs_images=False, mission_table=table)
    return {"cache": cache, "client": client, "table": table, "result": result, "stats": stats, "model": model}


def test_learned_rewards_favour_completing_steps(tiny_dataset, rl_run):
    result, stats = rl_run["result"], rl_run["stats"]
    completed = tiny_dataset.progress > tiny_dataset.progress_before
    assert result.reward_set == "rl_vlm_f" and result.rewards.shape == (tiny_dataset.num_transitions,)
    assert 0.0 <= result.rewards.min() and result.rewards.max() <= 1.0
    assert result.rewards[completed].mean() > result.rewards[~completed].mean() + 0.2
    outcomes = stats["preferences"]["segment_0"] + stats["preferences"]["segment_1"]
    assert stats["cannot_tell"] > 0 and outcomes == stats["labelled"]
    assert outcomes + stats["cannot_tell"] + stats["dropped"] == stats["queries"] == 150
    assert stats["reward_model"]["train_accuracy"] > 0.6
    assert rl_run["model"].size == 2
    assert result.provenance["method"] == "rl_vlm_f" and result.provenance["config"]["ensemble_size"] == 2


def test_rerun_asks_nothing_and_is_identical(tiny_dataset, rl_run):
    calls = rl_run["client"].usage.lvlm_calls
    again = CachedClient(ScriptedAnnotator(), ResponseCache(rl_run["cache"]))
    rerun, stats, _ = label_rl_vlm_f(tiny_dataset, again, again, FAST, needs_images=False,
                                     mission_table=rl_run["table"])
    assert again.usage.lvlm_calls == 0 and again.usage.cache_hits == calls
    np.testing.assert_array_equal(rerun.rewards, rl_run["result"].rewards)
    assert stats["preferences"] == rl_run["stats"]["preferences"]


def test_malformed_answers_are_reasked_then_dropped(tiny_dataset):
    config = RLVLMFConfig(num_queries=10, train_steps=2, max_reasks=1)
    result, stats, _ = label_rl_vlm_f(tiny_dataset, ScriptedAnnotator(CLEAN),
                                      ScriptedAnnotator(ScriptedNoise(malformed_rate=1.0)), config,
                                      needs_images=False, mission_table=mission_table(tiny_dataset))
    assert stats["dropped"] == 10 and stats["reasks"] == 10 and stats["labelled"] == 0
    assert np.all(result.rewards == 0.0)


def test_frames_of_both_segments_are_sent(tiny_dataset):
    seen = []

    class Recording(ScriptedAnnotator):
        def generate(self, requests):
            seen.extend((len(r.images), r.prompt) for r in requests)
            return super().generate(requests)

    config = RLVLMFConfig(num_queries=4, segment_length=8, frame_stride=4, tile_size=4, train_steps=1, ensemble_size=1)
    annotator = Recording(CLEAN)
    label_rl_vlm_f(tiny_dataset, annotator, annotator, config, needs_images=True,
                   mission_table=mission_table(tiny_dataset))
    assert len(seen) == 8 and all(4 <= n <= 6 for n, _ in seen)
    assert all("the first" in prompt and "segment 1" in prompt for _, prompt in seen)


def test_config_validation_names_the_key():
    assert config_from_params(None) == RLVLMFConfig()
    assert config_from_params({"ensemble_size": 5}).ensemble_size == 5
    for raw, key in [
        ({"ensemble": 3}, "rl_vlm_f.ensemble"),
        ({"ensemble_size": 0}, "rl_vlm_f.ensemble_size"),
        ({"lr": "fast"}, "rl_vlm_f.lr"),
        ({"egocentric": 1}, "rl_vlm_f.egocentric"),
        ({"batch_size": 2.5}, "rl_vlm_f.batch_size"),
    ]:
        with pytest.raises(ParamError) as error:
            config_from_params(raw)
        assert error.value.key == key, raw
