"""Labelling throughput of the OpenAI-compatible client, against two local servers.

    python benchmarks/labelling_throughput.py [--requests 24] [--concurrency 4]
        [--latency-ms 200] [--latency-requests 96] [--in-flight 8 32] [--skip-serve] [--out PATH]

1. A real `transformers serve` (tiny LLaVA built offline): requests per second sent one at a
   time (max_concurrency=1) and concurrently, their ratio, and the number of LVLM calls a cached
   re-run makes (expected 0). Writes reports/benchmarks/labelling.json. On a 2-core machine this
   measures the server's CPU, not the client.
2. A server that answers every request after a fixed latency (``--latency-ms``), using no CPU
   while it waits: what a paid API looks like to the client, where the limit is latency. Requests
   per second sequentially and with each ``--in-flight`` count, and their ratios to sequential,
   all in one run (a well-built client gets close to the number in flight). Written under
   ``latency_server`` in the same file, or alone to ``--out`` with ``--skip-serve``.

Numbers depend on the machine: they are measured, not asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.vlm.base import LVLMRequest
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.openai_backend import OpenAIClient
from tests.support.tiny_models import build_tiny_vlm


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class LatencyServer:
    """OpenAI-compatible ``/v1/chat/completions`` answering after ``latency_s``, in a thread per
    connection (so requests in flight wait side by side, as at a real API)."""

    def __init__(self, latency_s: float):
        answer = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": '{"scores": [5]}'},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 100, "completion_tokens": 8}}).encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # http.server writes the headers and the body separately: with Nagle on, the body
            # waits for the client's delayed ACK (40 ms here), which no real API adds.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(latency_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # 32 connections opened at once must not wait for a SYN retry

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def latency_benchmark(latency_ms: float, count: int, in_flight: list[int]) -> dict:
    """Requests per second against :class:`LatencyServer`, sequential and with each number in
    flight, in one run; ratios to sequential."""
    server = LatencyServer(latency_ms / 1000)
    requests = [LVLMRequest(prompt=f"score window {i}", images=(png(i),), max_new_tokens=16) for i in range(count)]
    rates = {}
    try:
        for concurrency in [1, *in_flight]:
            with OpenAIClient(server.base_url, "latency-model", api_key_env=None, max_concurrency=concurrency,
                              timeout_s=30, max_retries=0) as client:
                started = time.perf_counter()
                answers = client.generate(requests)
                rates[concurrency] = count / (time.perf_counter() - started)
            assert all(a.text == '{"scores": [5]}' for a in answers)
        # The labelling path: the same requests through the response cache (a fresh one), which
        # stores every answer as it arrives and must not cap what is in flight.
        widest = max(in_flight)
        with tempfile.TemporaryDirectory(prefix="rgvlm-bench-cache-") as directory, \
                OpenAIClient(server.base_url, "latency-model", api_key_env=None, max_concurrency=widest,
                             timeout_s=30, max_retries=0) as client:
            cached = CachedClient(client, ResponseCache(directory))
            started = time.perf_counter()
            cached.generate(requests)
            through_cache = count / (time.perf_counter() - started)
    finally:
        server.close()
    return {
        "server": f"local, {latency_ms:g} ms fixed latency per answer (no CPU while waiting)",
        "latency_ms": latency_ms, "requests": count, "images_per_request": 1,
        "requests_per_s": {("sequential" if n == 1 else f"{n}_in_flight"): round(r, 3) for n, r in rates.items()},
        "speedup_vs_sequential": {f"{n}_in_flight": round(rates[n] / rates[1], 2) for n in in_flight},
        f"through_cache_{widest}_in_flight": {"requests_per_s": round(through_cache, 3),
                                               "speedup_vs_sequential": round(through_cache / rates[1], 2)},
        "ideal_requests_per_s": {("sequential" if n == 1 else f"{n}_in_flight"): round(n * 1000 / latency_ms, 1)
                                 for n in [1, *in_flight]},
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--latency-requests", type=int, default=96)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--skip-serve", action="store_true", help="only the fixed-latency server")
    parser.add_argument("--out", type=Path, default=None, help="where the JSON goes (default: reports/benchmarks/)")
    args = parser.parse_args()
    latency = latency_benchmark(args.latency_ms, args.latency_requests, args.in_flight)
    print({"latency_server": latency})
    if args.skip_serve:
        write_json_atomic(args.out or paths.BENCHMARKS / "labelling_latency.json", latency)
        return
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
        "latency_server": latency,
    }
    write_json_atomic(args.out or paths.BENCHMARKS / "labelling.json", result)
    print(result)


if __name__ == "__main__":
    main()
