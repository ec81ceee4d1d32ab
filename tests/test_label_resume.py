"""A labelling run killed halfway (SIGKILL, a real process) resumes and re-asks nothing it had."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from rgvlm.methods.rg_vlm import RGVLMConfig, label_rg_vlm
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise

from .conftest import build_dataset

CLEAN = ScriptedNoise(score_sd=0.0, misattribution=0.0, malformed_rate=0.0)
CHILD = textwrap.dedent(
    """
    import sys, time
    from rgvlm.data import load_dataset
    from rgvlm.methods.rg_vlm import RGVLMConfig, label_rg_vlm
    from rgvlm.vlm.cache import CachedClient, ResponseCache
    from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise

    class Slow(ScriptedAnnotator):
        def generate(self, requests):
            time.sleep(0.05 * len(requests))  # a slow LVLM, so the parent can kill us midway
            return super().generate(requests)

    client = CachedClient(Slow(ScriptedNoise(score_sd=0.0, misattribution=0.0, malformed_rate=0.0)),
                          ResponseCache(sys.argv[2]), chunk_size=2)
    label_rg_vlm(load_dataset(sys.argv[1]), client, client, RGVLMConfig(window_length=8, window_stride=8),
                 needs_images=False)
    """
)


def test_killed_labelling_resumes_without_reasking(tmp_path):
    data_dir, cache_dir = tmp_path / "data", tmp_path / "cache"
    dataset = build_dataset(data_dir)
    config = RGVLMConfig(window_length=8, window_stride=8)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), str(cache_dir)], start_new_session=True)
    deadline = time.monotonic() + 120
    while len(ResponseCache(cache_dir)) < 10 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    answered = len(ResponseCache(cache_dir))
    assert answered >= 10

    class Counting(ScriptedAnnotator):
        calls = 0

        def generate(self, requests):
            Counting.calls += len(requests)
            return super().generate(requests)

    resumed = CachedClient(Counting(CLEAN), ResponseCache(cache_dir))
    result, stats = label_rg_vlm(dataset, resumed, resumed, config, needs_images=False)
    total = 2 * stats["windows"]  # one stage-1 and one stage-2 answer per window, no re-asks
    assert answered < total, "the child finished before it was killed: nothing was tested"
    assert Counting.calls == total - answered == resumed.usage.lvlm_calls
    assert resumed.usage.cache_hits == answered and len(ResponseCache(cache_dir)) == total
    # The resumed labels equal an uninterrupted run's.
    fresh = CachedClient(ScriptedAnnotator(CLEAN), ResponseCache(tmp_path / "fresh"))
    uninterrupted, _ = label_rg_vlm(dataset, fresh, fresh, config, needs_images=False)
    assert (uninterrupted.rewards == result.rewards).all()
