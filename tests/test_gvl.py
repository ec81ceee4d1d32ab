"""GVL progress estimation with the scripted annotator: windows, shuffled frames, the total
parser, interpolation, both reward forms, the optional analysis stage, the cache and failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rgvlm.evaluation.label_quality import value_order_correlation
from rgvlm.methods.gvl import (
    GVLConfig,
    ProgressTruth,
    config_from_params,
    diagnostic,
    episode_windows,
    interpolate_progress,
    label_gvl,
    parse_completion,
    window_frames,
)
from rgvlm.params import ParamError, labelling_config
from rgvlm.rewards.base import LabellingFailed, load_rewards, save_rewards
from rgvlm.vlm import cached_clients, failure_policy
from rgvlm.vlm.base import LVLMResponse
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise, ScriptedTruth

CLEAN = ScriptedNoise(score_sd=0.0, misattribution=0.0, malformed_rate=0.0)
CONFIG = GVLConfig(window_length=16, frame_stride=4)


def truth_after(dataset) -> np.ndarray:
    """Privileged progress of the state after each transition: sub-tasks done / k."""
    k_of_step = np.array([episode["k"] for episode in dataset.episodes])[dataset.episode_of_step]
    return dataset.progress / k_of_step


def shown_after(dataset, config: GVLConfig) -> np.ndarray:
    """Bool per transition: the observation after it is one a window shows (not interpolated)."""
    shown = np.zeros(dataset.num_transitions, dtype=bool)
    for episode in dataset.episodes:
        for s, e in episode_windows(episode["length"], config.window_length):
            shown[[episode["step_start"] + t - 1 for t in window_frames(s, e, config.frame_stride)]] = True
    return shown


def test_windows_frames_and_interpolation():
    assert episode_windows(10, 4) == [(0, 4), (4, 8), (8, 10)] and episode_windows(10, 0) == [(0, 10)]
    assert window_frames(0, 8, 4) == [4, 8] and window_frames(8, 10, 4) == [10] and window_frames(0, 3, 4) == [3]
    # the anchor (observation 0) is 0; linear between answers; the last answer holds after it
    np.testing.assert_allclose(interpolate_progress(6, {2: 0.5, 4: 1.0}), [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(interpolate_progress(3, {}), [0.0, 0.0, 0.0])  # every window failed


def test_config_errors_name_the_key():
    assert config_from_params(None) == GVLConfig()
    for raw, key in (({"reward": "value"}, "gvl.reward"), ({"window_length": 2, "frame_stride": 4}, "gvl.window_length"),
                     ({"frame_stride": 0}, "gvl.frame_stride"), ({"two_stage": "yes"}, "gvl.two_stage"),
                     ({"windows": 3}, "gvl.windows")):
        with pytest.raises(ParamError, match=key.replace(".", r"\.")):
            config_from_params(raw)


def test_parser_accepts_only_the_asked_form():
    assert parse_completion('{"completion": [0, 12.5, 100]}', 3).value == (0.0, 12.5, 100.0)
    assert parse_completion('Sure.\n```json\n{"completion": [40, 60]}\n```', 2).value == (40.0, 60.0)
    for text, n, error in (('{"completion": [1, 2]}', 3, "wrong_count"), ('{"completion": [1, 120]}', 2, "out_of_range"),
                           ('{"completion": [-1]}', 1, "out_of_range"), ('{"completion": ["40%"]}', 1, "not_number"),
                           ('{"completion": [true]}', 1, "not_number"), ('{"completion": [1e1]}', 1, "not_number"),
                           ('{"completion": [NaN]}', 1, "not_finite"), ("about half done", 1, "unparseable"),
                           ('{"completion": 5}', 1, "unparseable"),
                           ('{"completion": [1]} or {"completion": [2]}', 1, "ambiguous"),
                           ('{"completion": [1], "completion": [2]}', 1, "ambiguous"),
                           ("x" * 40_000, 1, "too_long"), (None, 1, "unparseable")):
        parsed = parse_completion(text, n)
        assert not parsed.ok and parsed.error == error, (text[:40] if text else text, parsed)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(0, 5))
def test_parser_is_total(text, n):
    parsed = parse_completion(text, n)
    assert parsed.ok or parsed.error
    if parsed.ok:
        assert len(parsed.value) == n and all(0 <= v <= 100 for v in parsed.value)


def test_clean_scripted_progress_is_the_ground_truth_at_the_shown_frames(tiny_dataset):
    result, stats = label_gvl(tiny_dataset, ScriptedAnnotator(CLEAN), ScriptedAnnotator(CLEAN), CONFIG,
                              needs_images=False)
    truth = truth_after(tiny_dataset)
    shown = shown_after(tiny_dataset, CONFIG)
    np.testing.assert_allclose(result.values[shown], truth[shown], atol=0.005)  # answered in whole percent
    assert 0.0 <= result.values.min() and result.values.max() <= 1.0
    assert stats["fallback_windows"] == 0 and stats["reasks"] == 0 and stats["frames_per_query_max"] <= 4
    # delta: each episode's rewards sum to its final progress; progress: the reward is the value
    for index, episode in enumerate(tiny_dataset.episodes):
        steps = tiny_dataset.episode_steps(index)
        assert np.isclose(result.rewards[steps].sum(), episode["final_progress"] / episode["k"], atol=0.005)
    progress, _ = label_gvl(tiny_dataset, ScriptedAnnotator(CLEAN), ScriptedAnnotator(CLEAN),
                            GVLConfig(window_length=16, frame_stride=4, reward="progress"), needs_images=False)
    np.testing.assert_array_equal(progress.rewards, result.values)
    assert value_order_correlation(tiny_dataset, result.rewards, result.values) > 0.5
    assert result.provenance["lvlm"]["backend"] == "scripted" and "GVL" in result.provenance["source"]


def test_frames_are_shuffled_so_a_position_biased_model_learns_nothing(tiny_dataset):
    class ByPosition(ScriptedAnnotator):
        """Answers a monotone ramp by the order the frames are shown in, whatever they show."""

        def generate(self, requests):
            out = []
            for r in requests:
                n = len(r.annotation.progress)
                out.append(LVLMResponse(text=json.dumps({"completion": np.linspace(10, 100, n).round().tolist()})))
            return out

    orders = []

    class Recording(ScriptedAnnotator):
        def generate(self, requests):
            orders.extend(r.annotation.order for r in requests)
            return super().generate(requests)

    clean, _ = label_gvl(tiny_dataset, Recording(CLEAN), Recording(CLEAN), GVLConfig(window_length=0),
                         needs_images=False)
    assert any(list(o) != sorted(o) for o in orders)  # shown out of time order
    biased, _ = label_gvl(tiny_dataset, ByPosition(CLEAN), ByPosition(CLEAN), GVLConfig(window_length=0),
                          needs_images=False)
    voc_clean = value_order_correlation(tiny_dataset, clean.rewards, clean.values)
    voc_biased = value_order_correlation(tiny_dataset, biased.rewards, biased.values)
    assert voc_clean > 0.5 and abs(voc_biased) < voc_clean - 0.3


def test_the_scripted_answer_follows_the_shared_noise_knobs():
    truth = ProgressTruth(2, (0.0, 0.0, 0.5, 0.5, 1.0, 1.0), (5, 0, 3, 1, 4, 2), (0, 0, 1, 1, 2, 2), 2)
    assert isinstance(truth, ScriptedTruth)
    clean = json.loads(truth.scripted_answer(np.random.default_rng(0), CLEAN))["completion"]
    assert clean == [100, 0, 50, 0, 100, 50]  # Frame j shows chronological frame order[j]
    noisy = np.array([json.loads(truth.scripted_answer(np.random.default_rng(s), ScriptedNoise(
        score_sd=1.0, misattribution=0.0, malformed_rate=0.0)))["completion"] for s in range(200)])
    assert 7 < np.std(noisy[:, 2] - 50) < 13  # score_sd is on the 0-10 scale: 10 points of percentage
    moved = [json.loads(truth.scripted_answer(np.random.default_rng(s), ScriptedNoise(
        score_sd=0.0, misattribution=1.0, malformed_rate=0.0)))["completion"] != clean for s in range(20)]
    assert all(moved)  # every change of progress seen a frame early or late
    always = ScriptedNoise(score_sd=0.0, misattribution=1.0, malformed_rate=0.0)
    later = ProgressTruth(2, (0.5, 0.5), (0, 1), (1, 1), 2, start=0.5)  # a window after the first: no change in it
    assert json.loads(later.scripted_answer(np.random.default_rng(0), always))["completion"] == [50, 50]
    first = ProgressTruth(2, (0.5, 0.5), (0, 1), (1, 1), 2)  # from the anchor's 0: the change may be seen late
    assert json.loads(first.scripted_answer(np.random.default_rng(0), always))["completion"] == [0, 50]
    bad = [parse_completion(truth.scripted_answer(np.random.default_rng(s), ScriptedNoise(malformed_rate=1.0)), 6)
           for s in range(30)]
    assert not any(p.ok for p in bad) and {p.error for p in bad} >= {"wrong_count", "out_of_range", "unparseable"}
    analysis = ProgressTruth(1, truth.progress, truth.order, truth.done, 2)
    assert "Frame 1: 2 of 2 sub-tasks done." in analysis.scripted_answer(np.random.default_rng(0), CLEAN)


def test_two_stage_asks_an_analysis_first(tiny_dataset):
    prompts = []

    class Recording(ScriptedAnnotator):
        def generate(self, requests):
            prompts.extend(r.prompt for r in requests)
            return super().generate(requests)

    one, _ = label_gvl(tiny_dataset, Recording(CLEAN), Recording(CLEAN), CONFIG, needs_images=False)
    single = len(prompts)
    assert not any("An analysis of these frames" in p for p in prompts)
    two, stats = label_gvl(tiny_dataset, Recording(CLEAN), Recording(CLEAN),
                           GVLConfig(window_length=16, frame_stride=4, two_stage=True), needs_images=False)
    assert len(prompts) - single == 2 * stats["windows"]
    assert sum("An analysis of these frames:\nFrame 1: " in p for p in prompts[single:]) == stats["windows"]
    np.testing.assert_array_equal(one.rewards, two.rewards)  # clean answers: the analysis changes no number here
    assert two.provenance["lvlm"].get("stage2_model") is not None and "analysis" in two.provenance["source"]
    bad = ScriptedAnnotator(ScriptedNoise(malformed_rate=1.0))
    _, stats = label_gvl(tiny_dataset, ScriptedAnnotator(CLEAN), bad, CONFIG, needs_images=False)
    assert stats["fallback_windows"] == 0  # one stage: the main model answers, not the stage-2 one
    _, stats = label_gvl(tiny_dataset, ScriptedAnnotator(CLEAN), bad, GVLConfig(two_stage=True), needs_images=False)
    assert stats["fallback_windows"] == stats["windows"]  # two stages: the stage-2 model answers


def test_malformed_answers_are_reasked_then_interpolated_and_the_failure_rate_is_checked(tiny_dataset, tmp_path):
    bad = ScriptedAnnotator(ScriptedNoise(malformed_rate=1.0))
    result, stats = label_gvl(tiny_dataset, bad, bad, GVLConfig(window_length=16, max_reasks=2), needs_images=False)
    assert stats["fallback_windows"] == stats["windows"] and stats["reasks"] == 2 * stats["windows"]
    assert np.all(result.rewards == 0.0) and np.all(result.values == 0.0)  # nothing known: the anchor's 0
    broken = labelling_config({"scripted": {"malformed_rate": 1.0}})
    stage1, stage2, _ = cached_clients(broken, tmp_path / "gvl")
    with pytest.raises(LabellingFailed, match=r"^gvl: .* windows \(100\.0%\)"):
        label_gvl(tiny_dataset, stage1, stage2, CONFIG, needs_images=False,
                  failure_policy=failure_policy(broken, tmp_path / "gvl"))
    stage1, stage2, _ = cached_clients(labelling_config({}), tmp_path / "default")
    _, stats = label_gvl(tiny_dataset, stage1, stage2, CONFIG, needs_images=False,
                         failure_policy=failure_policy(labelling_config({}), tmp_path / "default"))
    assert stats["fallback_windows"] <= 0.05 * stats["windows"]


def test_frames_are_sent_with_the_anchor_and_a_cached_rerun_asks_nothing(tiny_dataset, tmp_path):
    sent = []

    class Recording(ScriptedAnnotator):
        def generate(self, requests):
            sent.extend((len(r.images), len(r.annotation.progress), r.images[0]) for r in requests)
            return super().generate(requests)

    config = GVLConfig(window_length=16, frame_stride=4, tile_size=4)
    first = CachedClient(Recording(CLEAN), ResponseCache(tmp_path))
    result, _ = label_gvl(tiny_dataset, first, first, config)
    assert sent and all(images == frames + 1 for images, frames, _ in sent)  # the anchor, then the frames
    assert all(anchor[:4] == b"\x89PNG" for _, _, anchor in sent)
    calls = first.usage.lvlm_calls
    again = CachedClient(Recording(CLEAN), ResponseCache(tmp_path))
    rerun, _ = label_gvl(tiny_dataset, again, again, config)
    assert calls > 0 and again.usage.lvlm_calls == 0
    np.testing.assert_array_equal(rerun.rewards, result.rewards)


def test_the_values_are_saved_beside_the_rewards(tiny_dataset, tmp_path):
    result, _ = label_gvl(tiny_dataset, ScriptedAnnotator(), ScriptedAnnotator(), CONFIG, needs_images=False)
    save_rewards(tmp_path, result)
    back = load_rewards(tmp_path, "gvl")
    assert (tmp_path / "gvl.values.npy").exists() and back.values is not None
    np.testing.assert_allclose(back.values, result.values, atol=1e-6)
    import matplotlib.pyplot as plt

    figure = diagnostic(tiny_dataset, result, tmp_path)  # the labelling notebook's view of it
    assert len(figure.axes) >= 1 and figure.axes[0].get_legend() is not None
    plt.close(figure)


def test_token_probs_read_every_completion_with_no_parse_failure(tiny_dataset):
    """labelling.scoring: token_probs: every percentage is read over "0", "10", ..., "100" even when
    every generated answer would be malformed, and the progress still follows the ground truth."""
    noise = ScriptedNoise(score_sd=0.5, misattribution=0.0, malformed_rate=1.0)
    for reduce in ("expectation", "argmax"):
        scored = ScriptedAnnotator(noise, scoring="token_probs", token_reduce=reduce)
        result, stats = label_gvl(tiny_dataset, scored, scored, CONFIG, needs_images=False)
        assert stats["fallback_windows"] == 0 and stats["stage2_errors"] == {}
        assert stats["token_probs_windows"] == stats["windows"]
        assert np.corrcoef(result.values, truth_after(tiny_dataset))[0, 1] > 0.9
        if reduce == "argmax":
            shown = shown_after(tiny_dataset, CONFIG)
            assert set(np.round(result.values[shown] * 10, 6).tolist()) <= set(range(11))


def test_a_percentage_template_and_numbers_on_a_finer_scale():
    from rgvlm.vlm.token_probs import AnswerTemplate

    template = AnswerTemplate.json_list("completion", 3, 0, 100, 10)
    assert template.candidates == tuple(str(n) for n in range(0, 101, 10))
    assert template.match(json.dumps({"completion": [10, 100, 0]})) == [1, 10, 0]
    assert template.match(json.dumps({"completion": [12, 100, 0]})) is None
    assert template.read_numbers(json.dumps({"completion": [12, 100, 0]})) == [12.0, 100.0, 0.0]
    assert template.read_numbers("no numbers here") is None
    with pytest.raises(ValueError, match="step=7"):
        AnswerTemplate.json_list("completion", 3, 0, 100, 7)
