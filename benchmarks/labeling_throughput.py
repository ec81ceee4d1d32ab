"""Labelling throughput against a real local `transformers serve` (tiny LLaVA built offline).

    python benchmarks/labeling_throughput.py [--requests 24] [--concurrency 4]

In one run: requests per second sent one at a time (max_concurrency=1) and concurrently, their
ratio, and the number of LVLM calls a cached re-run makes (expected 0). Writes
reports/benchmarks/labeling.json. Numbers depend on the machine: they are measured, not asserted.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from rgvlm import paths
from rgvlm.data.storage import write_json_atomic
from rgvlm.vlm.base import LVLMRequest
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.openai_backend import OpenAIClient
from rgvlm.vlm.tiny_models import build_tiny_vlm


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rgvlm-bench-"))
    model = build_tiny_vlm("llava", root / "tiny-llava")
    (root / "hf" / "hub").mkdir(parents=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [shutil.which("transformers", path=str(Path(sys.executable).parent)), "serve", str(model),
         "--port", str(port), "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(180):
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        requests = [LVLMRequest(prompt=f"score window {i}", images=(png(2 * i), png(2 * i + 1)),
                                max_new_tokens=args.max_new_tokens) for i in range(args.requests)]
        OpenAIClient(base_url, str(model), api_key_env=None).generate(requests[:2])  # warm-up (model load)
        rates = {}
        for name, concurrency in (("sequential", 1), ("concurrent", args.concurrency)):
            client = OpenAIClient(base_url, str(model), api_key_env=None, max_concurrency=concurrency, timeout_s=120)
            started = time.perf_counter()
            client.generate(requests)
            rates[name] = args.requests / (time.perf_counter() - started)
        cache = ResponseCache(root / "cache")
        first = CachedClient(OpenAIClient(base_url, str(model), api_key_env=None, max_concurrency=args.concurrency), cache)
        first.generate(requests)
        rerun = CachedClient(OpenAIClient(base_url, str(model), api_key_env=None), cache)
        rerun.generate(requests)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "server": "transformers serve (tiny random LLaVA, CPU)", "requests": args.requests, "images_per_request": 2,
        "max_new_tokens": args.max_new_tokens, "concurrency": args.concurrency,
        "sequential_requests_per_s": round(rates["sequential"], 3), "concurrent_requests_per_s": round(rates["concurrent"], 3),
        "speedup": round(rates["concurrent"] / rates["sequential"], 3),
        "first_run_calls": first.usage.lvlm_calls, "cached_rerun_calls": rerun.usage.lvlm_calls,
        "cached_rerun_hits": rerun.usage.cache_hits, "cpu_count": os.cpu_count(),
    }
    write_json_atomic(paths.BENCHMARKS / "labeling.json", result)
    print(result)


if __name__ == "__main__":
    main()
