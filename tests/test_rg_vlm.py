"""RG-VLM labelling with the scripted annotator: windows, re-asks, fallbacks, the cache."""

from __future__ import annotations

import numpy as np
import pytest

from rgvlm.methods.rg_vlm import RGVLMConfig, config_from_params, episode_windows, label_rg_vlm
from rgvlm.params import ParamError
from rgvlm.rewards.queries import frame_indices
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise

CLEAN = ScriptedNoise(score_sd=0.0, misattribution=0.0, malformed_rate=0.0)


def test_windows_cover_every_transition():
    assert episode_windows(10, 4, 4) == [(0, 4), (4, 8), (8, 10)]
    assert episode_windows(3, 8, 8) == [(0, 3)]
    assert episode_windows(8, 4, 2) == [(0, 4), (2, 6), (4, 8)]
    assert frame_indices(0, 8, 4) == [0, 4, 8] and frame_indices(4, 10, 4) == [4, 8, 10]


def test_clean_scripted_labels_put_full_reward_on_completions(tiny_dataset):
    result, stats = label_rg_vlm(tiny_dataset, ScriptedAnnotator(CLEAN), ScriptedAnnotator(CLEAN),
                                 RGVLMConfig(window_length=8, window_stride=8), needs_images=False)
    completed = tiny_dataset.progress > tiny_dataset.progress_before
    assert np.all(result.rewards[completed] == 1.0)
    assert set(np.round(result.rewards[~completed] * 10).astype(int)) <= {1, 4}  # idle or approach
    assert stats["reasks"] == 0 and stats["fallback_windows"] == 0
    assert result.provenance["lvlm"]["backend"] == "scripted"


def test_malformed_answers_are_reasked_then_fall_back(tiny_dataset):
    always_bad = ScriptedAnnotator(ScriptedNoise(malformed_rate=1.0))
    config = RGVLMConfig(window_length=8, window_stride=8, max_reasks=2, fallback_score=0)
    result, stats = label_rg_vlm(tiny_dataset, ScriptedAnnotator(CLEAN), always_bad, config, needs_images=False)
    assert stats["fallback_windows"] == stats["windows"] and stats["reasks"] == 2 * stats["windows"]
    assert sum(stats["stage2_errors"].values()) == 3 * stats["windows"]
    assert np.all(result.rewards == 0.0)
    sometimes_bad = ScriptedAnnotator(ScriptedNoise(malformed_rate=0.4, seed=3))
    _, stats = label_rg_vlm(tiny_dataset, ScriptedAnnotator(CLEAN), sometimes_bad, config, needs_images=False)
    assert stats["reasks"] > 0 and stats["fallback_windows"] < stats["windows"] / 2


def test_frames_are_sent_and_a_cached_rerun_asks_nothing(tiny_dataset, tmp_path):
    seen_images = []

    class Recording(ScriptedAnnotator):
        def generate(self, requests):
            seen_images.extend(len(r.images) for r in requests)
            return super().generate(requests)

    config = RGVLMConfig(window_length=8, window_stride=8, frame_stride=4, tile_size=4)
    first = CachedClient(Recording(CLEAN), ResponseCache(tmp_path))
    result, _ = label_rg_vlm(tiny_dataset, first, first, config)
    assert seen_images and all(n >= 2 for n in seen_images)
    calls = first.usage.lvlm_calls
    again = CachedClient(Recording(CLEAN), ResponseCache(tmp_path))
    rerun, _ = label_rg_vlm(tiny_dataset, again, again, config)
    assert again.usage.lvlm_calls == 0 and again.usage.cache_hits == calls
    np.testing.assert_array_equal(rerun.rewards, result.rewards)


def test_bad_config_is_rejected(tiny_dataset):
    with pytest.raises(ParamError, match="rg_vlm.window_length=0"):
        RGVLMConfig(window_length=0)
    with pytest.raises(ParamError, match="rg_vlm.fallback_score=11"):
        config_from_params({"fallback_score": 11})
    with pytest.raises(ParamError, match="rg_vlm.frame_stride=2.5"):
        config_from_params({"frame_stride": 2.5})
    with pytest.raises(ParamError, match="rg_vlm.window=8"):
        config_from_params({"window": 8})
    assert config_from_params(None) == RGVLMConfig()
    limit = tiny_dataset.max_episode_limit
    with pytest.raises(ParamError, match=f"at most {limit}"):
        label_rg_vlm(tiny_dataset, ScriptedAnnotator(CLEAN), ScriptedAnnotator(CLEAN), RGVLMConfig(window_length=limit + 1),
                     needs_images=False)
    with pytest.raises(ValueError, match="malformed_rate"):
        ScriptedNoise(malformed_rate=2.0)
