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
    # rolled them out on validation layouts, and with a time limit of 0 s stopped at its first
    # evaluation (update 2 of 4), saying where.
    result = json.loads((out / "gpu_updates_cpu.json").read_text())
    variant = "batch_size=8,hidden_dim=16"
    assert result["seconds"][variant]["updates"] == 2 and result["seconds"][variant]["device"] == "cpu"
    assert result["dataset"]["num_episodes"] == 4 and result["dataset"]["dataset"]["ks"] == [1]
    rows = {(r["reward_set"], r["policy"]) for r in result["summary"]}
    assert rows == {(name, policy) for name in ("sparse", "oracle", "bc_success") for policy in ("greedy", "sampled@0.5")}
    assert all(r["split"] == "validation" and r["num_episodes"] == 1 for r in result["summary"])
    assert {c["reward_set"] for c in result["critic"]} == {"sparse", "oracle", "bc_success"}
    assert "time limit of 0s reached at step 2" in (out / "learning.log").read_text()
