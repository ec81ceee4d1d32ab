"""The OpenAI-compatible backend against a real `transformers serve` process serving a tiny
LLaVA built from a config (real HTTP, real server, no download)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from rgvlm.vlm.base import LVLMRequest
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.openai_backend import OpenAIClient
from tests.support.tiny_models import build_tiny_vlm

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base_url, model path) of a `transformers serve` process, stopped after the module."""
    executable = shutil.which("transformers", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.fail("`transformers serve` is not installed: pip install 'transformers[serving]'")
    root = tmp_path_factory.mktemp("serve")
    model = build_tiny_vlm("llava", root / "tiny-llava")
    (root / "hf" / "hub").mkdir(parents=True)  # /v1/models fails when the hub cache is missing
    port = free_port()
    env = {**os.environ, "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1"}
    log = open(root / "serve.log", "w")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen([executable, "serve", str(model), "--port", str(port), "--device", "cpu"],
                               stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 90
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited: {(root / 'serve.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not answer in 90 s: {(root / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base_url, str(model)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = (np.random.default_rng(seed).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_real_server_answers_requests_with_several_images(served):
    base_url, model = served
    client = OpenAIClient(base_url, model, api_key_env=None, max_concurrency=2, timeout_s=60, max_retries=2)
    assert client.check_reachable() == 200
    requests = [LVLMRequest(prompt=f"describe {i}", images=tuple(png(i * 10 + j) for j in range(i + 1)), max_new_tokens=6)
                for i in range(3)]
    responses = client.generate(requests)
    assert len(responses) == 3
    for response in responses:
        assert isinstance(response.text, str) and response.meta["status"] == 200
        assert 0 < response.completion_tokens <= 6 and response.prompt_tokens > 0
    # More images, more prompt tokens: the images reached the model.
    assert responses[0].prompt_tokens < responses[1].prompt_tokens < responses[2].prompt_tokens


def test_cached_rerun_against_the_server_makes_no_call(served, tmp_path):
    base_url, model = served
    requests = [LVLMRequest(prompt=f"score {i}", images=(png(100 + i),), max_new_tokens=4) for i in range(2)]
    first = CachedClient(OpenAIClient(base_url, model, api_key_env=None, timeout_s=60), ResponseCache(tmp_path))
    answers = first.generate(requests)
    again = CachedClient(OpenAIClient(base_url, model, api_key_env=None, timeout_s=60), ResponseCache(tmp_path))
    assert [a.text for a in again.generate(requests)] == [a.text for a in answers]
    assert first.usage.lvlm_calls == 2 and again.usage.lvlm_calls == 0 and again.usage.cache_hits == 2


def test_token_probs_against_a_server_without_logprobs_fail_clearly(served):
    """`transformers serve` answers chat completions without logprobs: labelling.scoring:
    token_probs stops at the first scored request, saying so, rather than guessing scores."""
    from rgvlm.vlm.base import LVLMError
    from rgvlm.vlm.token_probs import AnswerTemplate

    base_url, model = served
    client = OpenAIClient(base_url, model, api_key_env=None, timeout_s=60, max_retries=1, scoring="token_probs")
    request = LVLMRequest(prompt="score each action", images=(png(7),), max_new_tokens=12,
                          template=AnswerTemplate.json_list("scores", 2, 0, 10))
    with pytest.raises(LVLMError, match="logprobs"):
        client.generate([request])
    # Requests without a template (stage-1 analyses) are still generated as usual.
    assert client.generate([LVLMRequest(prompt="describe", images=(png(8),), max_new_tokens=4)])[0].meta["status"] == 200
