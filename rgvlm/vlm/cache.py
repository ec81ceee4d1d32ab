"""A content-addressed, crash-safe cache of LVLM answers: pay for each answer once.

The key is the SHA-256 of everything that decides an answer: backend, model, generation
settings, system text, prompt text and the bytes of every image. Each answer is one JSON
file (``<root>/<key[:2]>/<key>.json``) written atomically, so concurrent writers never
corrupt it and a run killed halfway keeps every answer it received. The directory is a
DVC stage output: ``dvc push`` / ``dvc pull`` share the answers.

Nothing in the cache can stop a run. Every answer is kept, including those the parsers reject
(they were paid for): the labelling code counts them and re-asks under ``max_reasks``. A file
that cannot be read as an answer (hand-edited, cut short by a full disk, written by another
tool) is moved aside to ``<key>.json.corrupt``, counted, and asked again.

Several processes may share one cache directory (two ``dvc repro`` at once, or machines
sharing a disk). Before asking, a process *claims* each missing key with a file created
exclusively (``<key>.claim``); a key claimed by another process is not asked but waited for,
and read from the cache once its owner has stored it. So an answer is paid for twice only
when a claim's owner dies mid-request: a claim is stale when its process is gone (same host)
or older than ``claim_timeout_s`` (another host), and is then taken over.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgvlm.atomic import canonical_json, sweep_debris, write_bytes_atomic, writer_alive
from rgvlm.progress import Progress
from rgvlm.vlm.base import LVLMClient, LVLMError, LVLMRequest, LVLMResponse


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
    if settings.get("scoring") == "token_probs" and request.template is not None:
        # Scored, not generated: the template decides the answer. Generated answers' keys are
        # unchanged (their settings carry no "scoring"), so the two never mix.
        content["template"] = request.template.record()
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


_HOST = socket.gethostname()
# Claim files this process holds (across every cache object), so that a claim left by this
# process's own earlier client, which died without releasing it, can be told apart.
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


def _record(raw: bytes) -> dict[str, Any] | None:
    """A cache file's record when it is one, else None."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        return None
    for name in ("prompt_tokens", "completion_tokens"):
        if isinstance(record.get(name), bool) or not isinstance(record.get(name), int):
            return None
    if not isinstance(record.get("meta", {}), dict):
        return None
    return record


class ResponseCache:
    """Answers on disk, one file per key (see the module docstring)."""

    def __init__(self, root: str | Path, claim_timeout_s: float = 900.0):
        self.root = Path(root)
        # Longer than one request may take with all its retries, or a claim of a live
        # process on another host is taken over and its answer paid for twice.
        self.claim_timeout_s = claim_timeout_s
        self.corrupt = 0  # files found unreadable and moved aside

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def claim_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.claim"

    def get(self, key: str) -> LVLMResponse | None:
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        record = _record(raw)
        if record is None:
            self._set_aside(path)
            return None
        return LVLMResponse(
            text=record["text"],
            prompt_tokens=record["prompt_tokens"],
            completion_tokens=record["completion_tokens"],
            meta={**record.get("meta", {}), "cached": True},
        )

    def _set_aside(self, path: Path) -> None:
        """Keep an unreadable file for inspection, out of the way of the answer that replaces it."""
        try:
            os.replace(path, path.with_name(path.name + ".corrupt"))
        except FileNotFoundError:
            pass  # another process set it aside (or replaced it) first
        self.corrupt += 1

    def put(self, key: str, response: LVLMResponse, request_summary: dict[str, Any]) -> None:
        record = {
            "text": response.text,
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens,
            "meta": response.meta,
            "request": request_summary,
        }
        write_bytes_atomic(self.path(key), canonical_json(record))

    # -- claims (several processes on one cache) ---------------------------------------------
    def claim(self, key: str) -> bool:
        """Take the right to ask ``key``; False while another live process holds it."""
        path = self.claim_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after taking over a stale claim
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale(path) or not self._remove_stale(path):
                    return False
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump({"host": _HOST, "pid": os.getpid(), "time": time.time()}, handle)
            with _HELD_LOCK:
                _HELD.add(str(path))
            return True
        return False

    def release(self, key: str) -> None:
        path = self.claim_path(key)
        with _HELD_LOCK:
            _HELD.discard(str(path))
        path.unlink(missing_ok=True)

    def _stale(self, path: Path) -> bool:
        try:
            owner = json.loads(path.read_text(encoding="utf-8"))
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True  # released meanwhile: try again
        except (ValueError, OSError):
            owner = None  # being written, or broken: judge by age alone
            age = time.time() - path.stat().st_mtime if path.exists() else self.claim_timeout_s + 1
        if isinstance(owner, dict) and owner.get("host") == _HOST and isinstance(owner.get("pid"), int):
            if owner["pid"] == os.getpid():
                with _HELD_LOCK:
                    return str(path) not in _HELD
            return not writer_alive(owner["pid"], time.time() - age)
        return age > self.claim_timeout_s

    def _remove_stale(self, path: Path) -> bool:
        """Remove a stale claim; True when it is gone. Renaming first means that of two processes
        taking it over at once, only one removes it (the other's rename fails)."""
        moved = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.replace(path, moved)
        except FileNotFoundError:
            return True
        moved.unlink(missing_ok=True)
        return True

    def sweep(self) -> list[Path]:
        """Remove what dead processes left in the cache: temporaries of answers being written,
        claims whose process is gone (or, from another host, older than ``claim_timeout_s``) and
        stale claims being removed. The cache is a DVC output kept across runs (``persist``), so
        this runs before a labelling stage starts (rgvlm.pipeline), before DVC can record them.
        Live processes' claims and temporaries stay: a second run on the same cache goes on."""
        removed = sweep_debris(self.root)
        if not self.root.is_dir():
            return removed
        for path in self.root.glob("*/*.claim"):
            with _HELD_LOCK:
                if str(path) in _HELD:
                    continue
            if self._stale(path) and path.exists():
                path.unlink(missing_ok=True)
                removed.append(path)
        for path in self.root.glob("*/*.stale"):
            # A stale claim renamed for removal by a process that died before unlinking it.
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.exists() else 0


@dataclass
class UsageCounter:
    """What a labelling run cost: calls actually made, answers reused, tokens."""

    lvlm_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_corrupt: int = 0  # cache files unreadable as answers: set aside and asked again
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_call(self, response: LVLMResponse) -> None:
        with self._lock:
            self.lvlm_calls += 1
            self.prompt_tokens += response.prompt_tokens
            self.completion_tokens += response.completion_tokens

    def add_corrupt(self, count: int = 1) -> None:
        with self._lock:
            self.cache_corrupt += count

    def add_hit(self) -> None:
        with self._lock:
            self.cache_hits += 1

    def as_dict(self) -> dict[str, int]:
        return {
            "lvlm_calls": self.lvlm_calls,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cache_corrupt": self.cache_corrupt,
        }


class CachedClient:
    """Wraps a backend: answers from the cache first, asks the backend only for the rest,
    and stores every new answer before returning it. Keys another process has claimed are
    waited for instead of asked (see the module docstring)."""

    def __init__(self, client: LVLMClient, cache: ResponseCache, usage: UsageCounter | None = None,
                 chunk_size: int | None = None, poll_s: float = 0.05):
        # A backend that hands over each answer as it arrives (the OpenAI client) has every
        # answer stored at once, so its chunks only bound claims and the wait for a chunk's
        # slowest request: four rounds of max_concurrency keep its workers busy. Others'
        # answers are stored after every chunk: a crash loses at most one chunk.
        self.streams = bool(getattr(client, "answers_as_they_arrive", False))
        if chunk_size is None:
            chunk_size = max(8, 4 * int(getattr(client, "max_concurrency", 2))) if self.streams else 8
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size}: expected >= 1")
        self.chunk_size = chunk_size
        self.client = client
        self.cache = cache
        self.usage = usage or UsageCounter()
        self.backend, self.model = client.backend, client.model
        self.poll_s = poll_s
        self.waited_for_others = 0  # answers another process was asking when this one needed them

    def generation_settings(self) -> dict[str, Any]:
        return self.client.generation_settings()

    def _ask_and_release(self, requests: list[LVLMRequest], keys: list[str], chunk: list[int],
                         results: list[LVLMResponse | None], held: set[str], bar: Progress) -> None:
        """Ask ``chunk`` and give up this process's claims on its keys (answered or not)."""
        self._ask(requests, keys, chunk, results, bar)
        for key in {keys[i] for i in chunk} & held:
            self.cache.release(key)
            held.discard(key)

    def _ask(self, requests: list[LVLMRequest], keys: list[str], chunk: list[int],
             results: list[LVLMResponse | None], bar: Progress) -> None:
        def store(j: int, answer: LVLMResponse) -> None:
            i = chunk[j]
            self.usage.add_call(answer)
            summary = {"backend": self.client.backend, "model": self.client.model,
                       "prompt_chars": len(requests[i].prompt), "images": len(requests[i].images)}
            self.cache.put(keys[i], answer, summary)
            results[i] = answer
            bar.update()

        batch = [requests[i] for i in chunk]
        if self.streams:
            self.client.generate(batch, on_answer=store)  # type: ignore[call-arg]
            return
        answers = self.client.generate(batch)
        if len(answers) != len(batch):
            raise LVLMError(f"{self.client.backend} backend {self.client.model!r} returned {len(answers)} answers "
                            f"for {len(batch)} requests; expected one each, in order")
        for j, answer in enumerate(answers):
            store(j, answer)

    def _lookup(self, key: str) -> LVLMResponse | None:
        corrupt = self.cache.corrupt
        found = self.cache.get(key)
        if self.cache.corrupt > corrupt:
            self.usage.add_corrupt(self.cache.corrupt - corrupt)
        return found

    def generate(self, requests: list[LVLMRequest]) -> list[LVLMResponse]:
        settings = self.client.generation_settings()
        keys = [request_key(self.client.backend, self.client.model, settings, r) for r in requests]
        results: list[LVLMResponse | None] = [self._lookup(key) for key in keys]
        missing = [i for i, result in enumerate(results) if result is None]
        for _ in range(len(requests) - len(missing)):
            self.usage.add_hit()
        # Every LVLM query of every labelling method passes here: the one place its progress is
        # reported (answered of this call's requests, and how many came from the cache).
        hits = len(requests) - len(missing)
        with Progress(f"LVLM {self.model}", len(requests), "answers", initial=hits, cache_hits=hits,
                      on=None if requests else False) as bar:
            self._generate(requests, keys, results, missing, bar)
        return results  # type: ignore[return-value]

    def _generate(self, requests: list[LVLMRequest], keys: list[str], results: list[LVLMResponse | None],
                  missing: list[int], bar: Progress) -> None:
        held: set[str] = set()  # claims this call holds now
        mine: set[str] = set()  # keys this call has claimed
        try:
            # First pass: ask what nobody else is asking, a chunk at a time; note the rest.
            others: list[int] = []
            position = 0
            while position < len(missing):
                chunk: list[int] = []
                while position < len(missing) and len(chunk) < self.chunk_size:
                    i = missing[position]
                    position += 1
                    if self._take(keys[i], i, results, held, mine, bar):
                        chunk.append(i)
                    elif results[i] is None:
                        others.append(i)
                if chunk:
                    self._ask_and_release(requests, keys, chunk, results, held, bar)
            # Then wait for the others' answers; ask those whose owner died without one.
            if others:
                self.waited_for_others += len(others)
            delay = self.poll_s
            while others:
                ready = []
                for i in others:
                    if self._take(keys[i], i, results, held, mine, bar):
                        ready.append(i)
                if ready:
                    self._ask_and_release(requests, keys, ready, results, held, bar)
                others = [i for i in others if results[i] is None]
                if others:
                    time.sleep(delay)
                    delay = min(1.0, delay * 1.5)
        finally:
            for key in held:
                self.cache.release(key)

    def _take(self, key: str, i: int, results: list[LVLMResponse | None], held: set[str], mine: set[str],
              bar: Progress) -> bool:
        """Whether this call should ask ``key`` now: False when it is answered meanwhile (then
        ``results[i]`` holds the answer) or claimed by another process."""
        if key in mine:
            # A request repeated in one call is asked again, as it always was: the scripted
            # annotator answers each from its own privileged truth, which is not in the key.
            return True
        found = self._lookup(key)
        if found is None and self.cache.claim(key):
            found = self._lookup(key)  # stored between the look-up and the claim
            if found is None:
                held.add(key)
                mine.add(key)
                return True
            self.cache.release(key)
        if found is not None:
            results[i] = found
            self.usage.add_hit()
            bar.update(cache_hits=bar.fields["cache_hits"] + 1)
        return False
