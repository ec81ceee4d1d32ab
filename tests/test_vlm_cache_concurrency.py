"""Two labelling processes on one cache directory (two `dvc repro` at once, or two machines on a
shared disk): no torn file, no lost answer, nothing paid for twice beyond what was in flight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

from rgvlm.methods.rg_vlm import RGVLMConfig, label_rg_vlm
from rgvlm.vlm.base import LVLMRequest, LVLMResponse
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise

from .conftest import build_dataset

CHUNK = 2
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from rgvlm.data import load_dataset
    from rgvlm.methods.rg_vlm import RGVLMConfig, label_rg_vlm
    from rgvlm.vlm.cache import CachedClient, ResponseCache
    from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise

    class Slow(ScriptedAnnotator):
        def generate(self, requests):
            time.sleep(0.01 * len(requests))  # a paid API's latency: both processes are in flight at once
            return super().generate(requests)

    data_dir, cache_dir, go = sys.argv[1:4]
    dataset = load_dataset(data_dir)
    client = CachedClient(Slow(ScriptedNoise(seed=3)), ResponseCache(cache_dir), chunk_size=CHUNK)
    while not os.path.exists(go):  # start together, imports done
        time.sleep(0.005)
    result, stats = label_rg_vlm(dataset, client, client, RGVLMConfig(window_length=8, window_stride=8),
                                 needs_images=False)
    print(json.dumps({"rewards": result.rewards.tolist(), "calls": client.usage.lvlm_calls,
                      "hits": client.usage.cache_hits, "waited": client.waited_for_others,
                      "windows": stats["windows"], "reasks": stats["reasks"]}))
    """.replace("CHUNK", str(CHUNK))
)


def test_two_processes_share_one_cache(tmp_path):
    data_dir, cache_dir, go = tmp_path / "data", tmp_path / "cache", tmp_path / "go"
    dataset = build_dataset(data_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), str(cache_dir), str(go)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(2)]
    time.sleep(0.2)
    go.touch()
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    a, b = outputs

    # One uninterrupted run, alone, is the reference: the same answers, and what it paid.
    alone = CachedClient(ScriptedAnnotator(ScriptedNoise(seed=3)), ResponseCache(tmp_path / "alone"))
    reference, stats = label_rg_vlm(dataset, alone, alone, RGVLMConfig(window_length=8, window_stride=8),
                                    needs_images=False)
    paid_once = alone.usage.lvlm_calls
    assert a["rewards"] == b["rewards"] == reference.rewards.tolist()  # no lost or mixed-up answer
    assert a["calls"] > 0 and b["calls"] > 0, "one process did everything: nothing was shared"
    assert a["waited"] + b["waited"] > 0, "no process ever waited for the other: nothing overlapped"
    # Each in-flight chunk of one process can coincide with the other's, at most once per stage.
    assert paid_once <= a["calls"] + b["calls"] <= paid_once + 2 * CHUNK
    assert a["calls"] + a["hits"] == b["calls"] + b["hits"] == paid_once  # every answer: asked or read

    # No torn file, no leftover claim or temporary file; every answer is one readable record.
    files = sorted(p for p in cache_dir.rglob("*") if p.is_file())
    answers = [p for p in files if p.suffix == ".json"]
    assert len(answers) == len(ResponseCache(alone.cache.root)) and files == answers
    for path in answers:
        record = json.loads(path.read_text())
        assert isinstance(record["text"], str)


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path):
    cache = ResponseCache(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    requests = [LVLMRequest(prompt="q0"), LVLMRequest(prompt="q1")]

    class Echo:
        backend, model = "scripted", "echo"
        calls = 0

        def generation_settings(self):
            return {}

        def generate(self, batch):
            Echo.calls += len(batch)
            return [LVLMResponse(text=f"answer to {r.prompt}") for r in batch]

    client = CachedClient(Echo(), cache)
    from rgvlm.vlm.cache import _HOST, request_key

    key = request_key("scripted", "echo", {}, requests[0])
    cache.claim_path(key).parent.mkdir(parents=True)
    cache.claim_path(key).write_text(json.dumps({"host": _HOST, "pid": pid, "time": 0}))
    started = time.monotonic()
    answers = client.generate(requests)
    assert [r.text for r in answers] == ["answer to q0", "answer to q1"] and Echo.calls == 2
    assert time.monotonic() - started < 2 and not cache.claim_path(key).exists()
    # A claim of another host is honoured until it is older than claim_timeout_s.
    other = request_key("scripted", "echo", {}, LVLMRequest(prompt="q2"))
    cache.claim_path(other).parent.mkdir(parents=True, exist_ok=True)
    cache.claim_path(other).write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 0}))
    assert not ResponseCache(tmp_path, claim_timeout_s=60).claim(other)
    assert ResponseCache(tmp_path, claim_timeout_s=0).claim(other)
