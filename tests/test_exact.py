"""The exact outputs (README "Reproducing and verifying") are bit-identical whatever the thread
count and the state of the LVLM cache: the tiny profile's dataset, labels (scripted annotator),
reward sets and label quality are rebuilt in two fresh processes, one with 1 torch/OpenMP thread
and a cold LVLM cache, one with 2 threads and the first one's cache (it asks nothing), and
compared byte for byte. The labelling metrics are compared without their run fields (wall times,
cache-dependent counters: ``RUN_KEYS``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rgvlm.rewards.base import REWARD_DECIMALS, RUN_KEYS, quantise_rewards, without_run_fields

SCRIPT = Path(__file__).resolve().parent / "exact_outputs.py"


def build(out: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MPLBACKEND": "Agg",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYGAME_HIDE_SUPPORT_PROMPT": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), str(out), str(threads)], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def exact_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).parts[0] in ("data", "outputs", "reports"))


@pytest.mark.slow
def test_exact_outputs_do_not_depend_on_the_thread_count(tmp_path):
    one, two = tmp_path / "threads1", tmp_path / "threads2"
    build(one, 1)
    shutil.copytree(one / "cache", two / "cache")  # a warm cache: the second build asks no LVLM
    build(two, 2)
    files = exact_files(one)
    assert files == exact_files(two)
    for part in ("data/obs_grid.npy", "outputs/labels/embedding/embedding.npy", "outputs/labels/erl_vlm/erl_vlm.npy",
                 "outputs/labels/rl_vlm_f/reward_model.pt", "outputs/rewards/sparse+rg_vlm@0.5.npy",
                 "reports/metrics/label_quality.json"):
        assert part in files
    differ = []
    for name in files:
        a, b = (one / name).read_bytes(), (two / name).read_bytes()
        if name.startswith("reports/metrics/labelling_"):  # wall times and cache counters are not exact
            old, new = (json.loads(x) for x in (a, b))
            assert new["cost"]["lvlm_calls"] == 0 < old["cost"]["lvlm_calls"] or name.endswith("embedding.json")
            a, b = (json.dumps(without_run_fields(x, RUN_KEYS), sort_keys=True) for x in (old, new))
        if a != b:
            differ.append(name)
    assert differ == [], f"not bit-identical across thread counts: {differ}"


def test_quantise_rewards_is_the_decimal_grid():
    values = quantise_rewards([0.1234567891, -0.0000001, 1.0, 0.3])
    assert values.dtype.name == "float32"
    assert values.tolist() == np.float32([0.123457, 0.0, 1.0, 0.3]).tolist()
    assert str(values[1]) == "0.0"  # no negative zero
    assert REWARD_DECIMALS == 6


def test_exact_threads_restores_the_callers_settings():
    import torch

    from rgvlm.rewards.base import exact_threads

    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with exact_threads(1):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
