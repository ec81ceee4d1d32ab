"""A labelling stage whose queries end without a usable answer more often than
``labelling.max_failure_rate`` allows fails, naming the method, the counts by reason and where the
raw answers are, instead of training on fallbacks. The limit is handed to the method explicitly
(``failure_policy``), by the labelling stage (:func:`rgvlm.rewards.label_stage.label_with`)."""

from __future__ import annotations

import numpy as np
import pytest

from rgvlm.methods.erl_vlm import ERLVLMConfig, label_erl_vlm
from rgvlm.methods.rg_vlm import RGVLMConfig, label_rg_vlm
from rgvlm.methods.rl_vlm_f import RLVLMFConfig, label_rl_vlm_f
from rgvlm.methods.vlm_car import VLMCaRConfig, label_vlm_car
from rgvlm.params import labelling_config
from rgvlm.rewards.base import LabellingFailed
from rgvlm.rewards.label_stage import label_with
from rgvlm.rewards.registry import METHODS
from rgvlm.vlm import cached_clients, failure_policy

BROKEN = {"scripted": {"malformed_rate": 1.0}}  # every answer the parser must reject
RG = RGVLMConfig(window_length=8, window_stride=8)


def clients(raw, cache_dir):
    """The stage's cached (stage-1, stage-2) clients of the ``labelling`` section ``raw``, their
    usage counter and the failure policy the stage hands the method."""
    config = labelling_config(raw)
    return (*cached_clients(config, cache_dir), failure_policy(config, cache_dir))


def test_rg_vlm_fails_above_the_threshold_with_an_actionable_message(tiny_dataset, tmp_path):
    stage1, stage2, _, policy = clients(BROKEN, tmp_path / "rg_vlm")
    with pytest.raises(LabellingFailed) as error:
        label_rg_vlm(tiny_dataset, stage1, stage2, RG, needs_images=False, failure_policy=policy)
    message = str(error.value)
    assert message.startswith("rg_vlm: ") and "windows (100.0%)" in message
    assert "labelling.max_failure_rate=0.05" in message and str(tmp_path / "rg_vlm") in message
    assert "wrong_count: " in message and "unparseable: " in message  # counts by reason
    assert len(list((tmp_path / "rg_vlm").glob("*/*.json"))) > 0  # the answers stay, paid for
    # A user who accepts the fallbacks says so; the rerun asks nothing again.
    stage1, stage2, usage, policy = clients({**BROKEN, "max_failure_rate": 1.0}, tmp_path / "rg_vlm")
    _, stats = label_rg_vlm(tiny_dataset, stage1, stage2, RG, needs_images=False, failure_policy=policy)
    assert stats["fallback_windows"] == stats["windows"] and usage.lvlm_calls == 0


def test_the_default_noise_stays_below_the_threshold(tiny_dataset, tmp_path):
    stage1, stage2, _, policy = clients({}, tmp_path / "rg_vlm")
    _, stats = label_rg_vlm(tiny_dataset, stage1, stage2, RG, needs_images=False, failure_policy=policy)
    assert stats["fallback_windows"] <= 0.05 * stats["windows"]


@pytest.mark.parametrize("method", ["erl_vlm", "rl_vlm_f", "vlm_car"])
def test_every_method_checks_its_failure_rate(tiny_dataset, tmp_path, method):
    stage1, stage2, _, policy = clients(BROKEN, tmp_path / method)
    table = np.zeros((1, 1, 1), dtype=np.float32)  # never reached: the check comes before the reward model
    with pytest.raises(LabellingFailed, match=rf"^{method}: \d+ of \d+ .*\(100.0%\)"):
        if method == "erl_vlm":
            label_erl_vlm(tiny_dataset, stage1, stage2, ERLVLMConfig(num_queries=20, segment_length=8),
                          needs_images=False, mission_table=table, failure_policy=policy)
        elif method == "rl_vlm_f":
            label_rl_vlm_f(tiny_dataset, stage1, stage2, RLVLMFConfig(num_queries=20, segment_length=8),
                           needs_images=False, mission_table=table, failure_policy=policy)
        else:
            label_vlm_car(tiny_dataset, stage1, VLMCaRConfig(random_trajectories=0), needs_images=False,
                          failure_policy=policy)


def test_the_labelling_stage_hands_the_policy_to_the_method(tiny_dataset, tmp_path):
    """The stage's path (what ``label@<method>`` runs): ``labelling.max_failure_rate`` reaches the
    method through its ``label`` call, and the same method on the same answers passes with a
    limit that accepts the fallbacks."""
    method = METHODS["rg_vlm"]
    config = method.config_from_params({"window_length": 8, "window_stride": 8})
    with pytest.raises(LabellingFailed, match=r"^rg_vlm: .*max_failure_rate=0.05"):
        label_with(method, config, labelling_config(BROKEN), tiny_dataset, tmp_path / "cache", tmp_path / "out")
    result = label_with(method, config, labelling_config({**BROKEN, "max_failure_rate": 1.0}), tiny_dataset,
                        tmp_path / "cache", tmp_path / "out")
    assert result.cost["lvlm_calls"] == 0 and result.rewards.shape == (tiny_dataset.num_transitions,)
