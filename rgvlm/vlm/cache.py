"""A content-addressed, crash-safe cache of LVLM answers: pay for each answer once.

The key is the SHA-256 of everything that decides an answer: backend, model, generation
settings, system text, prompt text and the bytes of every image. Each answer is one JSON
file (``<root>/<key[:2]>/<key>.json``) written atomically, so concurrent writers never
corrupt it and a run killed halfway keeps every answer it received. The directory is a
DVC stage output: ``dvc push`` / ``dvc pull`` share the answers.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgvlm.data.storage import canonical_json, write_bytes_atomic
from rgvlm.vlm.base import LVLMClient, LVLMRequest, LVLMResponse


def request_key(backend: str, model: str, settings: dict[str, Any], request: LVLMRequest) -> str:
    """The cache key of one request to one model."""
    content = {
        "backend": backend,
        "model": model,
        "settings": settings,
        "system": request.system,
        "prompt": request.prompt,
        "images": [hashlib.sha256(image).hexdigest() for image in request.images],
        "max_new_tokens": request.max_new_tokens,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


class ResponseCache:
    """Answers on disk, one file per key."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> LVLMResponse | None:
        path = self.path(key)
        if not path.exists():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        return LVLMResponse(
            text=record["text"],
            prompt_tokens=record["prompt_tokens"],
            completion_tokens=record["completion_tokens"],
            meta={**record.get("meta", {}), "cached": True},
        )

    def put(self, key: str, response: LVLMResponse, request_summary: dict[str, Any]) -> None:
        record = {
            "text": response.text,
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens,
            "meta": response.meta,
            "request": request_summary,
        }
        write_bytes_atomic(self.path(key), canonical_json(record))

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.exists() else 0


@dataclass
class UsageCounter:
    """What a labelling run cost: calls actually made, answers reused, tokens."""

    lvlm_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_call(self, response: LVLMResponse) -> None:
        with self._lock:
            self.lvlm_calls += 1
            self.prompt_tokens += response.prompt_tokens
            self.completion_tokens += response.completion_tokens

    def add_hit(self) -> None:
        with self._lock:
            self.cache_hits += 1

    def as_dict(self) -> dict[str, int]:
        return {
            "lvlm_calls": self.lvlm_calls,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


class CachedClient:
    """Wraps a backend: answers from the cache first, asks the backend only for the rest,
    and stores every new answer before returning it."""

    def __init__(self, client: LVLMClient, cache: ResponseCache, usage: UsageCounter | None = None, chunk_size: int = 8):
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size}: expected >= 1")
        self.chunk_size = chunk_size  # answers are stored after every chunk: a crash loses at most one
        self.client = client
        self.cache = cache
        self.usage = usage or UsageCounter()
        self.backend, self.model = client.backend, client.model

    def generation_settings(self) -> dict[str, Any]:
        return self.client.generation_settings()

    def generate(self, requests: list[LVLMRequest]) -> list[LVLMResponse]:
        settings = self.client.generation_settings()
        keys = [request_key(self.client.backend, self.client.model, settings, r) for r in requests]
        results: list[LVLMResponse | None] = [self.cache.get(key) for key in keys]
        missing = [i for i, result in enumerate(results) if result is None]
        for _ in range(len(requests) - len(missing)):
            self.usage.add_hit()
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start : start + self.chunk_size]
            answers = self.client.generate([requests[i] for i in chunk])
            for i, answer in zip(chunk, answers, strict=True):
                self.usage.add_call(answer)
                summary = {"backend": self.client.backend, "model": self.client.model,
                           "prompt_chars": len(requests[i].prompt), "images": len(requests[i].images)}
                self.cache.put(keys[i], answer, summary)
                results[i] = answer
        return results  # type: ignore[return-value]
