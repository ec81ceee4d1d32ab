"""A labelling stage whose queries end without a usable answer more often than
``labelling.max_failure_rate`` allows fails, naming the method, the counts by reason and where the
raw answers are, instead of training on fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from rgvlm.params import labelling_config
from rgvlm.rewards.base import LabellingFailed
from rgvlm.rewards.erl_vlm import ERLVLMConfig, label_erl_vlm
from rgvlm.rewards.rg_vlm import RGVLMConfig, label_rg_vlm
from rgvlm.rewards.rl_vlm_f import RLVLMFConfig, label_rl_vlm_f
from rgvlm.rewards.vlm_car import VLMCaRConfig, label_vlm_car
from rgvlm.vlm import cached_clients

BROKEN = {"scripted": {"malformed_rate": 1.0}}  # every answer the parser must reject
RG = RGVLMConfig(window_length=8, window_stride=8)


def test_rg_vlm_fails_above_the_threshold_with_an_actionable_message(tiny_dataset, tmp_path):
    stage1, stage2, _ = cached_clients(labelling_config(BROKEN), tmp_path / "rg_vlm")
    with pytest.raises(LabellingFailed) as error:
        label_rg_vlm(tiny_dataset, stage1, stage2, RG, needs_images=False)
    message = str(error.value)
    assert message.startswith("rg_vlm: ") and "windows (100.0%)" in message
    assert "labelling.max_failure_rate=0.05" in message and str(tmp_path / "rg_vlm") in message
    assert "wrong_count: " in message and "unparseable: " in message  # counts by reason
    assert len(list((tmp_path / "rg_vlm").glob("*/*.json"))) > 0  # the answers stay, paid for
    # A user who accepts the fallbacks says so; the rerun asks nothing again.
    stage1, stage2, usage = cached_clients(labelling_config({**BROKEN, "max_failure_rate": 1.0}), tmp_path / "rg_vlm")
    _, stats = label_rg_vlm(tiny_dataset, stage1, stage2, RG, needs_images=False)
    assert stats["fallback_windows"] == stats["windows"] and usage.lvlm_calls == 0


def test_the_default_noise_stays_below_the_threshold(tiny_dataset, tmp_path):
    stage1, stage2, _ = cached_clients(labelling_config({}), tmp_path / "rg_vlm")
    _, stats = label_rg_vlm(tiny_dataset, stage1, stage2, RG, needs_images=False)
    assert stats["fallback_windows"] <= 0.05 * stats["windows"]


@pytest.mark.parametrize("method", ["erl_vlm", "rl_vlm_f", "vlm_car"])
def test_every_method_checks_its_failure_rate(tiny_dataset, tmp_path, method):
    stage1, stage2, _ = cached_clients(labelling_config(BROKEN), tmp_path / method)
    table = np.zeros((1, 1, 1), dtype=np.float32)  # never reached: the check comes before the reward model
    with pytest.raises(LabellingFailed, match=rf"^{method}: \d+ of \d+ .*\(100.0%\)"):
        if method == "erl_vlm":
            label_erl_vlm(tiny_dataset, stage1, stage2, ERLVLMConfig(num_queries=20, segment_length=8),
                          needs_images=False, mission_table=table)
        elif method == "rl_vlm_f":
            label_rl_vlm_f(tiny_dataset, stage1, stage2, RLVLMFConfig(num_queries=20, segment_length=8),
                           needs_images=False, mission_table=table)
        else:
            label_vlm_car(tiny_dataset, stage1, VLMCaRConfig(random_trajectories=0), needs_images=False)
