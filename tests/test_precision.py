"""train.precision: bf16 autocast as an opt-in for the stack's updates and the policies' forward;
fp32 (the default) is recorded nowhere, so the runs trained before keep their bytes."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from rgvlm.params import ParamError, load_params, train_config
from rgvlm.rl.iql import IQLConfig, TransitionBatch, bf16_native, config_record
from rgvlm.rl.multirun import MultiRunIQL, StackedPolicy
from rgvlm.rl.runs import run_fingerprint
from tests.test_iql import _random_dataset
from tests.test_multirun import ONE_HOT, _stacked_batches

ROOT = Path(__file__).resolve().parents[1]

# bf16 keeps 8 bits of mantissa (about 0.4% per rounding): a few updates of a small net stay
# within a few percent of fp32, far closer than runs with different seeds are.
CLOSE = dict(rtol=0.05, atol=0.02)


def _maybe_warns():
    """bf16 on a CPU without native bf16 warns (emulated, slow) but computes the same thing."""
    return contextlib.nullcontext() if bf16_native("cpu") else pytest.warns(RuntimeWarning, match="emulated")


def test_bf16_updates_stay_close_to_fp32():
    """The same stack, batches and seeds in fp32 and bf16: every metric finite and close to fp32's,
    parameters close after the updates, and not identical (autocast really ran in bf16)."""
    fp32 = IQLConfig(**ONE_HOT, batch_size=16)
    bf16 = dataclasses.replace(fp32, precision="bf16")
    data = _random_dataset(64)
    seeds = [0, 1, 2]
    stacks = {"fp32": MultiRunIQL(fp32, seeds), "bf16": MultiRunIQL(bf16, seeds)}
    differ = False
    for _, batch in _stacked_batches(data, len(seeds), fp32.batch_size, steps=6):
        reference = stacks["fp32"].update(batch)
        with _maybe_warns():
            lower = stacks["bf16"].update(batch)
        for name, value in lower.items():
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
            torch.testing.assert_close(value, reference[name], **CLOSE)
            differ |= not torch.equal(value, reference[name])
    assert differ, "bf16 gave fp32's numbers bit for bit: autocast did not run"
    for group in ("critic", "value", "policy"):
        for key, tensor in getattr(stacks["fp32"], group).items():
            lower = getattr(stacks["bf16"], group)[key]
            assert lower.dtype == torch.float32  # parameters (and Adam's state) stay fp32
            torch.testing.assert_close(lower, tensor, **CLOSE)


def test_bf16_policy_acts_like_fp32_on_most_states():
    """StackedPolicy with a bf16 config: valid actions, greedy argmax equal to fp32's except where
    two logits are nearly tied."""
    config = IQLConfig(**ONE_HOT)
    data = _random_dataset(64)
    states = [MultiRunIQL(config, [seed]).run_state(0)["policy"] for seed in (0, 1)]
    grid, carry, mission = (data[k].expand(2, *data[k].shape) for k in ("grid", "carry", "mission"))
    fp32 = StackedPolicy(config, states)(grid, carry, mission)
    with _maybe_warns():
        bf16 = StackedPolicy(dataclasses.replace(config, precision="bf16"), states)(grid, carry, mission)
    assert bf16.shape == fp32.shape == (2, 64) and bf16.dtype == torch.int64
    assert (bf16 == fp32).float().mean() >= 0.9


def test_precision_is_checked_before_training():
    train = load_params(ROOT / "params.yaml")["train"]
    with pytest.raises(ParamError, match=r"train\.precision='fp16'.*fp32, bf16"):
        train_config({**train, "precision": "fp16"})
    with pytest.raises(ParamError, match="half"):
        IQLConfig(precision="half")
    assert train_config(train).iql.precision == "fp32"  # params.yaml does not set it
    assert train_config({**train, "precision": "bf16"}).iql.precision == "bf16"


def test_fp32_is_recorded_nowhere_and_bf16_is_a_different_run(tiny_dataset):
    """The default's record (checkpoints, fingerprints, models/runs.json) has no precision key, as
    before the field existed; bf16's has one, so its fingerprint differs and an fp32 stack refuses
    its checkpoint."""
    fp32 = IQLConfig(**ONE_HOT)
    bf16 = dataclasses.replace(fp32, precision="bf16")
    assert "precision" not in config_record(fp32)
    assert config_record(bf16) == {**config_record(fp32), "precision": "bf16"}
    assert IQLConfig(**config_record(fp32)) == fp32 and IQLConfig(**config_record(bf16)) == bf16
    rewards = np.zeros(tiny_dataset.num_transitions, np.float32)
    assert "precision" not in run_fingerprint(fp32, rewards, tiny_dataset, 0)["config"]
    assert run_fingerprint(bf16, rewards, tiny_dataset, 0) != run_fingerprint(fp32, rewards, tiny_dataset, 0)
    state = MultiRunIQL(bf16, [0]).state_dict()
    with pytest.raises(ValueError, match="precision"):
        MultiRunIQL(fp32, [0]).load_state_dict(state)
    MultiRunIQL(bf16, [0]).load_state_dict(state)
    # A batch of the eager learner's shape goes through a bf16 eager update too.
    learner = MultiRunIQL(bf16, [0]).learner(0)
    data = _random_dataset(16)
    with _maybe_warns():
        metrics = learner.update(TransitionBatch(**data))
    assert all(torch.isfinite(v) for v in metrics.values())
