"""The local transformers backend, on tiny random VLMs built offline (tests/support/tiny_models.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from rgvlm.vlm.base import LVLMClient, LVLMError, LVLMRequest  # noqa: E402
from rgvlm.vlm.transformers_backend import TransformersClient  # noqa: E402
from tests.support.tiny_models import KINDS, build_tiny_vlm  # noqa: E402

MAX_NEW = 6


def png(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def requests() -> list[LVLMRequest]:
    """Three requests with 1, 2 and 3 images of different sizes; prompts of different lengths."""
    return [
        LVLMRequest(
            prompt="Is the agent closer to the goal?" + " Answer with a single number." * i,
            images=tuple(png(10 * i + j, 24 + 8 * j) for j in range(i + 1)),
            system="Answer with a number between 0 and 1." if i != 1 else None,
            max_new_tokens=8,
        )
        for i in range(3)
    ]


@pytest.fixture(scope="session")
def tiny_vlm_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-vlms")
    return {kind: build_tiny_vlm(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="session", params=KINDS)
def client(request, tiny_vlm_dirs) -> TransformersClient:
    return TransformersClient(str(tiny_vlm_dirs[request.param]), device="cpu", batch_size=3, max_new_tokens=MAX_NEW)


def test_client_protocol_and_settings(client):
    assert isinstance(client, LVLMClient)
    assert client.backend == "transformers"
    settings = client.generation_settings()
    assert settings["do_sample"] is False
    assert settings["max_new_tokens"] == MAX_NEW
    assert settings["dtype"] == "float32"


def test_batch_of_multi_image_requests(client):
    reqs = requests()
    responses = client.generate(reqs)
    assert len(responses) == 3
    for resp in responses:
        assert isinstance(resp.text, str)
        assert resp.prompt_tokens > 0
        assert 0 < resp.completion_tokens <= MAX_NEW
    # More images -> more prompt tokens (each image expands to several placeholder tokens).
    assert responses[0].prompt_tokens < responses[2].prompt_tokens


def test_greedy_is_deterministic(client):
    reqs = requests()
    first = client.generate(reqs)
    second = client.generate(reqs)
    assert [r.text for r in first] == [r.text for r in second]
    assert [r.completion_tokens for r in first] == [r.completion_tokens for r in second]


def test_batched_equals_one_by_one(client):
    """Left padding + greedy decoding: a row's answer does not depend on the rest of the batch."""
    reqs = requests()
    batched = client.generate(reqs)
    assert all(r.meta["batch_size"] == 3 for r in batched)
    singles = [client.generate([r])[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in singles]
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in singles]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in singles]


def test_request_max_new_tokens_caps_completion(client):
    reqs = requests()
    capped = [LVLMRequest(prompt=r.prompt, images=r.images, system=r.system, max_new_tokens=2) for r in reqs[:2]]
    out = client.generate(capped + reqs[2:])
    assert all(r.completion_tokens <= 2 for r in out[:2])
    assert out[2].completion_tokens <= MAX_NEW


def test_text_only_request(client):
    (resp,) = client.generate([LVLMRequest(prompt="Say a number.", max_new_tokens=3)])
    assert isinstance(resp.text, str) and resp.prompt_tokens > 0 and 0 < resp.completion_tokens <= 3


def test_llava_saves_and_reloads_with_auto_classes(tiny_vlm_dirs):
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaProcessor

    path = tiny_vlm_dirs["llava"]
    assert isinstance(AutoProcessor.from_pretrained(path), LlavaProcessor)
    assert AutoModelForImageTextToText.from_pretrained(path).config.model_type == "llava"


def test_missing_local_path_raises_before_loading(tmp_path, monkeypatch):
    import transformers

    def boom(*args, **kwargs):
        raise AssertionError("nothing may be loaded for a missing path")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", boom)
    missing = tmp_path / "no-such-model"
    with pytest.raises(LVLMError, match="no-such-model"):
        TransformersClient(str(missing))
    with pytest.raises(LVLMError, match="does-not-exist"):
        TransformersClient("./does-not-exist")


def test_missing_local_path_imports_nothing_heavy(tmp_path):
    code = (
        "import sys\n"
        "from rgvlm.vlm.base import LVLMError\n"
        "from rgvlm.vlm.transformers_backend import TransformersClient\n"
        "try:\n"
        f"    TransformersClient({str(tmp_path / 'absent')!r})\n"
        "except LVLMError as e:\n"
        "    assert 'absent' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_mixed_batch_with_and_without_images(client):
    reqs = [LVLMRequest(prompt="Say a number.", max_new_tokens=3), requests()[1]]
    mixed = client.generate(reqs)
    assert [r.text for r in mixed] == [client.generate([r])[0].text for r in reqs]
