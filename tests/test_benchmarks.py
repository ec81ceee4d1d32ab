"""The performance benchmarks' own arithmetic (benchmarks/iql_throughput.py's roofline,
benchmarks/evaluation_throughput.py's comparison); no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stack_flops_per_run_equal_an_eager_learners_and_its_networks_add_up(tiny_dataset):
    """The roofline's work: one stack update's counted FLOPs / runs = one eager update's, and the
    eager count's split by network (critic with its target, value, policy) sums to the total. On the
    profile's entity encoder: with the conv encoder the stack's count is higher (vmapped
    convolution_backward also computes the input's gradient, which the eager learner skips)."""
    from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL
    from rgvlm.rl.training import iql_config_for

    bench = _load("iql_throughput")
    config = iql_config_for(tiny_dataset, {"batch_size": 8, "n_step": 2, "gamma": 0.9, "encoder": "entities"})
    table = torch.zeros(len(tiny_dataset.missions), config.mission_slots, config.mission_embed_dim)
    data = DeviceTransitions(tiny_dataset, [np.ones(tiny_dataset.num_transitions, np.float32)], table, "cpu",
                             n_step=2, gamma=0.9)
    trainer = MultiRunIQL(config, [0, 1, 2], [0, 0, 0])
    total = bench.update_flops(trainer, data)
    eager, by_network = bench.eager_update_flops(config, data, "cpu")
    assert total > 0 and total == 3 * eager
    assert set(by_network) == {"DiscreteCritic", "ValueNetwork", "DiscretePolicy"}
    assert sum(by_network.values()) == eager


def test_evaluation_benchmark_compares_the_engines(tmp_path):
    """benchmarks/evaluation_throughput.py on the tiny profile: both engines, identical records."""
    bench = _load("evaluation_throughput")
    out = tmp_path / "evaluation.json"
    assert bench.main(["--params", str(ROOT / "profiles" / "tiny.yaml"), "--runs", "2", "--episodes-per-k", "1",
                       "--ks", "1", "2", "--precision", "fp32", "bf16", "--forward-blocks", "2",
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["rollout"]["identical"] and report["rollout"]["episodes"] == 4
    # (c): the bf16 forward's rollout beside fp32's, and the alternated blocks of policy calls.
    bf16 = report["rollout"]["arrays_bf16"]
    assert 0.0 <= bf16["records_equal_to_arrays"] <= 1.0 and bf16["episodes_per_s"] > 0
    assert len(report["forward_blocks"]["calls_per_s"]) == 2
    assert set(report["forward_blocks"]["ratio_to_fp32_median"]) == {"bf16"}
