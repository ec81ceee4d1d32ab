"""LVLM backend for any OpenAI-compatible chat-completions server.

Works with OpenAI itself, Gemini's OpenAI-compatible endpoint, vLLM and ``transformers serve``:
``POST {base_url}/chat/completions`` with the images as ``data:image/png;base64,...`` URLs
(in order, before the text) and the prompt as the last content part.

Transient failures are retried with exponential backoff and full jitter; ``Retry-After`` is
honoured (capped at ``backoff_max_s``). Other 4xx answers fail at once. Each response's ``meta``
records how many retries it took and the failure reasons seen, in order. The reasons:
``429`` / ``5xx`` (the status), ``timeout`` (one socket operation outlived ``timeout_s``),
``deadline`` (the whole attempt, connect + send + the entire body, outlived ``deadline_s``:
a server trickling bytes cannot hold a worker), ``connection``, ``protocol`` (e.g. a body cut
short), ``decoding`` (a corrupt ``Content-Encoding``), ``too_large`` (more than
``max_body_bytes``, declared or read), ``redirect`` (not followed: a POST must not be replayed
elsewhere), ``malformed`` (not JSON, or no message content), ``http`` and ``unexpected`` (any
other error: recorded and retried rather than let out). After the retries only
:class:`LVLMError` leaves :meth:`OpenAIClient.generate`.

``scoring="token_probs"`` (:mod:`rgvlm.vlm.token_probs`): a request with an answer template is
sent with ``logprobs: true, top_logprobs: K``; the answer is generated as usual, matched against
the template, and each slot's distribution is read from the ``top_logprobs`` of the token where
the slot's value starts, restricted to the candidates (a token counts for a candidate when it
spells it, surrounding spaces aside) and renormalised. A slot whose alternatives hold no
candidate (a candidate split into several tokens by the server's tokenizer) is one-hot on the
generated value and counted in ``meta["slots_without_logprobs"]``; an answer that does not fit
the template is returned as text, for the parser and the re-ask. A server that returns no
``logprobs`` raises :class:`LVLMError` at once (not retried): use ``scoring: generate`` there.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from rgvlm.vlm.base import LVLMError, LVLMRequest, LVLMResponse
from rgvlm.vlm.token_probs import normalise, reduce_distribution, scoring_settings

log = logging.getLogger(__name__)

REACHABLE_TIMEOUT_S = 5.0
# Chat answers are kilobytes; a body this large is a misbehaving server (or a decompression
# bomb), not an answer worth holding in memory.
MAX_BODY_BYTES = 16 * 2**20


class _Retryable(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


class _Deadline:
    """Ends one attempt at its deadline, whatever it is waiting for.

    A read timeout bounds each socket read, not the attempt: a server that trickles bytes
    with gaps shorter than the timeout would hold the worker for ever. At the deadline the
    connection's socket is shut down, which wakes the blocked read at once; the attempt then
    fails with reason ``deadline``. The socket is learnt from httpcore's ``trace`` hook when
    the connection is made, or from the response when a pooled connection is reused.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.attach(info.get("return_value"))

    def attach(self, stream: Any) -> None:
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._sock = sock
            expired = self.expired
        if expired:
            self._shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            sock = self._sock
        if sock is not None:
            self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _reason(exc: BaseException) -> str:
    """The recorded reason of a failed attempt's exception."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.DecodingError):
        return "decoding"
    if isinstance(exc, httpx.ProtocolError):
        return "protocol"
    if isinstance(exc, httpx.TransportError):
        return "connection"
    if isinstance(exc, httpx.TooManyRedirects):
        return "redirect"
    if isinstance(exc, httpx.HTTPError | httpx.StreamError):
        return "http"
    return "unexpected"


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; None when absent or not a number."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff
    return seconds if seconds >= 0 else None


def _message_text(body: Any) -> str | None:
    """``choices[0].message.content`` as text, or None when the body does not have it."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with content parts
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    return None


def _logaddexp(a: float, b: Any) -> float:
    """log(exp(a) + exp(b)); a ``b`` that is not a finite number adds nothing."""
    try:
        b = float(b)
    except (TypeError, ValueError, OverflowError):
        return a
    if not math.isfinite(b):
        return a
    if a == float("-inf"):
        return b
    top = max(a, b)
    return top + math.log(math.exp(a - top) + math.exp(b - top))


def _usage(body: dict[str, Any]) -> tuple[int, int]:
    usage = body.get("usage") or {}
    if not isinstance(usage, dict):
        return 0, 0
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError, OverflowError):  # "usage": {"prompt_tokens": Infinity}
        return 0, 0


class OpenAIClient:
    """:class:`~rgvlm.vlm.base.LVLMClient` for an OpenAI-compatible ``/chat/completions`` server.

    ``api_key_env`` names the environment variable holding the key; ``None`` sends no
    ``Authorization`` header (local vLLM / ``transformers serve``). ``sleep`` and ``rng`` are
    injectable so that tests need not wait for real backoff.
    """

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        deadline_s: float | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        temperature: float = 0.0,
        seed: int | None = 0,
        scoring: str = "generate",
        token_reduce: str = "expectation",
        top_logprobs: int = 20,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url={base_url!r}: must start with http:// or https:// (e.g. http://localhost:8000/v1)"
            )
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r}: must be a non-empty served model name")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency!r}: must be an integer >= 1")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r}: must be > 0 seconds")
        if deadline_s is None:
            deadline_s = 3 * timeout_s  # room for a slow connect, a slow start and a long answer
        if not (isinstance(deadline_s, int | float) and 0 < deadline_s < float("inf")):
            raise ValueError(f"deadline_s={deadline_s!r}: must be a finite number of seconds > 0")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes={max_body_bytes!r}: must be an integer >= 1024")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r}: must be an integer >= 0")
        if not backoff_base_s >= 0:
            raise ValueError(f"backoff_base_s={backoff_base_s!r}: must be >= 0 seconds")
        if not backoff_max_s >= 0:
            raise ValueError(f"backoff_max_s={backoff_max_s!r}: must be >= 0 seconds")
        if not temperature >= 0:
            raise ValueError(f"temperature={temperature!r}: must be >= 0")
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 1 <= top_logprobs <= 20:
            raise ValueError(f"top_logprobs={top_logprobs!r}: must be an integer in 1..20")
        self._scoring_settings = scoring_settings(scoring, token_reduce)
        self.scoring, self.token_reduce, self.top_logprobs = scoring, token_reduce, top_logprobs

        api_key: str | None = None
        if api_key_env is not None:
            api_key = os.environ.get(api_key_env, "").strip()
            if not api_key:
                raise LVLMError(
                    f"environment variable {api_key_env} is not set (or empty); the OpenAI-compatible "
                    f"backend at {base_url} needs an API key. Fix: `export {api_key_env}=...`, or set "
                    "api_key_env to null for servers without auth (local vLLM / transformers serve)."
                )

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = float(timeout_s)
        self.deadline_s = float(deadline_s)
        self.max_body_bytes = max_body_bytes
        self.max_retries = max_retries
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.temperature = float(temperature)
        self.seed = seed
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random(0)
        self._rng_lock = threading.Lock()
        # Kept only to take it out of whatever the server sends back (an error page that echoes the
        # request's headers, an answer that quotes them): nothing the client writes or raises holds it.
        self._secret = api_key or None
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            headers=self._headers,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol --------------------------------------------------------------------------

    def generation_settings(self) -> dict[str, Any]:
        """What changes the answer besides the request (part of the response-cache key).

        ``base_url`` is deliberately left out: the same served model behind another URL
        (another vLLM replica, a proxy, a different port) gives the same answers and should
        share cache entries. ``max_tokens`` comes from each request's ``max_new_tokens``,
        which is already part of the request key.
        """
        return {
            "api": "openai-chat-completions",
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": "request.max_new_tokens",
            "image_encoding": "png-data-url",
            **self._scoring_settings,
            **({"top_logprobs": self.top_logprobs} if self._scoring_settings else {}),
        }

    def check_reachable(self, timeout_s: float = REACHABLE_TIMEOUT_S) -> int:
        """Cheap ``GET {base_url}/models``; any HTTP answer counts as reachable.

        Returns the status code; raises :class:`LVLMError` when no connection can be made.
        """
        url = f"{self.base_url}/models"
        try:
            response = self._http.get(url, timeout=min(timeout_s, self.timeout_s))
        except httpx.TransportError as exc:
            raise LVLMError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} ({type(exc).__name__}: {exc}). "
                "Fix: start the server (e.g. `vllm serve MODEL` or `transformers serve`) or correct base_url "
                "(it must include the API prefix, e.g. http://localhost:8000/v1)."
            ) from exc
        return response.status_code

    # The response cache may pass ``on_answer`` to store each answer as it arrives.
    answers_as_they_arrive = True

    def generate(self, requests: list[LVLMRequest], return_exceptions: bool = False,
                 on_answer: Callable[[int, LVLMResponse], None] | None = None) -> list[LVLMResponse | LVLMError]:
        """Answer every request, in order, with at most ``max_concurrency`` in flight.

        With ``return_exceptions=True`` a request that failed (retries exhausted, or a
        non-retryable 4xx) yields its :class:`LVLMError` in its slot and the others are kept;
        otherwise the first failure (in request order) is raised. ``on_answer(index, response)``
        is called, from a worker thread, as each answer arrives: what is received is kept even
        when another request fails, or the process dies, before the batch is done.
        """
        requests = list(requests)
        if not requests:
            return []
        workers = min(self.max_concurrency, len(requests))
        results: list[LVLMResponse | LVLMError] = []

        def answer(index: int, request: LVLMRequest) -> LVLMResponse:
            response = self._answer(request)
            if on_answer is not None:
                on_answer(index, response)
            return response

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-lvlm") as pool:
            futures = [pool.submit(answer, index, request) for index, request in enumerate(requests)]
            try:
                for future in futures:
                    try:
                        results.append(future.result())
                    except Exception as exc:  # noqa: BLE001 - the error set is closed here
                        error = exc if isinstance(exc, LVLMError) else LVLMError(
                            f"{self.base_url} (model {self.model}): unexpected {type(exc).__name__}: {exc}")
                        if not return_exceptions:
                            raise error from (None if error is exc else exc)
                        results.append(error)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return results

    # -- one request -----------------------------------------------------------------------

    def _payload(self, request: LVLMRequest) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(image).decode("ascii")},
            }
            for image in request.images
        ]
        content.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, Any]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content})
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_new_tokens,
            "temperature": self.temperature,
        }
        if self.seed is not None:
            payload["seed"] = self.seed
        if self._scored(request):
            payload["logprobs"] = True
            payload["top_logprobs"] = self.top_logprobs
        return payload

    def _scored(self, request: LVLMRequest) -> bool:
        return self.scoring == "token_probs" and request.template is not None

    def _token_scored(self, request: LVLMRequest, response: LVLMResponse, body: dict[str, Any]) -> LVLMResponse:
        """``response`` with its slots' distributions read from the body's top_logprobs (see the
        module docstring)."""
        template = request.template
        choice = body["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") if isinstance(choice, dict) else None
        if not isinstance(content, list) or not content:
            raise LVLMError(
                f"{self.base_url} (model {self.model}) does not offer logprobs: the answer came without "
                "choices[0].logprobs.content although logprobs were requested. Token-probability scoring "
                "needs them; set scoring: generate for this server (or serve the model where logprobs are "
                "supported, e.g. vLLM)."
            )
        tokens = [entry.get("token", "") if isinstance(entry, dict) else "" for entry in content]
        text = "".join(tokens)
        found = re.search(template.pattern(template.slots), text)
        meta = {**response.meta, "scoring": "token_probs", "token_reduce": self.token_reduce}
        if found is None:
            return LVLMResponse(response.text, response.prompt_tokens, response.completion_tokens, meta)
        starts, offset = [], 0
        for token in tokens:
            starts.append(offset)
            offset += len(token)
        fills, probs, values, missing = [], [], [], 0
        for slot in range(template.slots):
            at = found.start(slot + 1)
            index = max(i for i, start in enumerate(starts) if start <= at)
            alternatives = content[index].get("top_logprobs") or []
            logprobs = [float("-inf")] * len(template.candidates)
            for alt in alternatives:
                if not isinstance(alt, dict) or not isinstance(alt.get("token"), str):
                    continue
                word = alt["token"].strip()
                if word in template.candidates:
                    k = template.candidates.index(word)
                    logprobs[k] = _logaddexp(logprobs[k], alt.get("logprob"))
            if all(lp == float("-inf") for lp in logprobs):
                missing += 1
                logprobs[template.candidates.index(found.group(slot + 1))] = 0.0
            distribution = normalise(logprobs)
            value, k = reduce_distribution(distribution, template.values, self.token_reduce)
            fills.append(template.candidates[k])
            probs.append([round(p, 8) for p in distribution])
            values.append(round(value, 8))
        meta |= {"candidates": list(template.candidates), "token_probs": probs, "token_values": values,
                 "slots_without_logprobs": missing, "generated_text": response.text}
        return LVLMResponse(template.render(fills), response.prompt_tokens, response.completion_tokens, meta)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.backoff_max_s, retry_after)
        with self._rng_lock:
            return self._rng.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))

    def _attempt(self, url: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
        limit = min(self.timeout_s, self.deadline_s)
        timeout = httpx.Timeout(limit)  # every socket operation, and never past the deadline
        deadline = _Deadline(self.deadline_s)
        try:
            with deadline, self._http.stream("POST", url, json=payload, timeout=timeout,
                                             extensions={"trace": deadline.trace}) as response:
                deadline.attach(response.extensions.get("network_stream"))
                status = response.status_code
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self.max_body_bytes:
                    raise _Retryable("too_large", f"HTTP {status} declares {declared} bytes, more than "
                                                  f"max_body_bytes={self.max_body_bytes}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_body_bytes:
                        raise _Retryable("too_large", f"HTTP {status} body passed max_body_bytes={self.max_body_bytes}")
        except _Retryable:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded, retried reason
            reason = _reason(exc)
            # With timeout_s >= deadline_s every socket operation's timeout is the deadline itself,
            # so such a timeout is the deadline, whichever of the two threads woke first.
            if deadline.expired or (reason == "timeout" and limit >= self.deadline_s):
                raise _Retryable("deadline", f"attempt passed its deadline of {self.deadline_s}s "
                                             f"({type(exc).__name__})") from exc
            detail = f"timeout after {limit}s ({type(exc).__name__})" if reason == "timeout" else \
                f"{type(exc).__name__}: {exc}"
            raise _Retryable(reason, self._scrub(detail)) from exc
        text_head = self._scrub(bytes(body[:200]).decode("utf-8", errors="replace"))
        if status == 429 or status >= 500:
            raise _Retryable(str(status), f"HTTP {status}: {text_head!r}",
                             _parse_retry_after(response.headers.get("Retry-After")))
        if 300 <= status < 400:
            raise _Retryable("redirect", self._scrub(f"HTTP {status} to {response.headers.get('Location')!r} (not followed)"))
        if status >= 400:
            raise LVLMError(f"{url} answered HTTP {status} (not retried): {text_head!r}")
        try:
            body_json = json.loads(bytes(body))
        except (ValueError, RecursionError) as exc:
            raise _Retryable("malformed", f"HTTP {status} with non-JSON body: {text_head!r}") from exc
        text = _message_text(body_json)
        if text is not None:
            text = self._scrub(text)  # the answer is cached (a DVC output): never with the key in it
        if text is None:
            raise _Retryable("malformed", f"HTTP {status} without choices[0].message.content: {text_head!r}")
        return text, body_json, status

    def _scrub(self, text: str) -> str:
        """``text`` with the API key replaced: server text goes into error messages, retry reasons
        (labelling metrics) and the response cache."""
        return text.replace(self._secret, "[API key redacted]") if self._secret else text

    def _answer(self, request: LVLMRequest) -> LVLMResponse:
        url = f"{self.base_url}/chat/completions"
        payload = self._payload(request)
        reasons: list[str] = []
        started = time.monotonic()
        for attempt in range(self.max_retries + 1):
            try:
                text, body, status = self._attempt(url, payload)
            except _Retryable as failure:
                reasons.append(failure.reason)
                if attempt >= self.max_retries:
                    raise LVLMError(
                        f"{url} (model {self.model}) failed after {attempt + 1} attempt(s) "
                        f"[{', '.join(reasons)}]; last: {failure.detail}"
                    ) from failure
                delay = self._backoff(attempt, failure.retry_after)
                log.debug("retrying %s in %.2fs after %s", url, delay, failure.detail)
                self._sleep(delay)
                continue
            prompt_tokens, completion_tokens = _usage(body)
            choice = body["choices"][0]
            answer = LVLMResponse(
                text=text,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                meta={
                    "retries": attempt,
                    "failures": reasons,
                    "latency_s": time.monotonic() - started,
                    "finish_reason": choice.get("finish_reason") if isinstance(choice, dict) else None,
                    "status": status,
                },
            )
            return self._token_scored(request, answer, body) if self._scored(request) else answer
        raise AssertionError("unreachable")  # pragma: no cover
