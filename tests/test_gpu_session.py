"""benchmarks/gpu_session.sh, the one-call script for a GPU lease, at toy size on the CPU
(GPU_SESSION_SMOKE=1), so that it has not rotted when a lease comes; and
experiments/learning.py, the validation-split tuning script it runs, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_session_smoke_runs_every_step_and_the_learning_script_stops_at_its_limit(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_SESSION_SMOKE": "1", "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    session = (out / "session.log").read_text()
    assert "END cuda_tests rc=0" in session and "END learning rc=0" in session, session
    assert "cuda False" in (out / "machine.txt").read_text()
    # The learning script: collected the overridden dataset, trained sparse / oracle / filtered BC,
    # rolled them out on validation layouts, and with a time limit of 0 s evaluated where it was
    # after its first update (before the first scheduled evaluation, at 2) and stopped, saying where.
    result = json.loads((out / "gpu_updates_cpu.json").read_text())
    variant = "batch_size=8,hidden_dim=16"
    assert result["seconds"][variant]["updates"] == 1 and result["seconds"][variant]["device"] == "cpu"
    assert result["dataset"]["num_episodes"] == 4 and result["dataset"]["dataset"]["ks"] == [1]
    rows = {(r["reward_set"], r["policy"]) for r in result["summary"]}
    assert rows == {(name, policy) for name in ("sparse", "oracle", "bc_success") for policy in ("greedy", "sampled@0.5")}
    assert all(r["split"] == "validation" and r["num_episodes"] == 1 for r in result["summary"])
    assert {c["reward_set"] for c in result["critic"]} == {"sparse", "oracle", "bc_success"}
    assert "time limit of 0s reached at step 1" in (out / "learning.log").read_text()


@pytest.mark.parametrize("n_step", [1, 4])
def test_throughput_benchmark_feeds_the_eager_learner_the_stacks_batches(tiny_dataset, n_step):
    """benchmarks/iql_throughput.py times eager learners on exactly the batches the stack draws,
    with one-step targets (no discount field: it broke on that None) and n-step ones."""
    import importlib.util

    import numpy as np
    import torch

    from rgvlm.rl.iql import IQLConfig
    from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL

    spec = importlib.util.spec_from_file_location("iql_throughput", ROOT / "benchmarks" / "iql_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = torch.zeros(len(tiny_dataset.missions), 6, 8)
    rewards = [np.arange(tiny_dataset.num_transitions, dtype=np.float32)]
    data = DeviceTransitions(tiny_dataset, rewards, table, "cpu", n_step=n_step, gamma=0.9)
    config = IQLConfig(batch_size=8, n_step=n_step, gamma=0.9)
    stack = MultiRunIQL(config, [7], [0])
    stacked = stack.sample(data)
    single = bench.single_batch(data, torch.tensor([7]), stack.step, config.batch_size)
    for name in stacked.__dataclass_fields__:
        value = getattr(stacked, name)
        if value is None:
            assert getattr(single, name) is None
        else:
            torch.testing.assert_close(getattr(single, name), value[0], rtol=0, atol=0)
    assert (single.discount is not None) == (n_step > 1)  # n-step targets carry their own discount
