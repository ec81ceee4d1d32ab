"""OpenAIClient against a real local HTTP server (stdlib, 127.0.0.1, started by each test)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable

import pytest
from PIL import Image

from rgvlm.vlm.base import LVLMClient, LVLMError, LVLMRequest, LVLMResponse
from rgvlm.vlm.openai_backend import OpenAIClient
from tests.support.chat_server import Action, FakeServer, completion, ok

KEY_ENV = "RGVLM_TEST_OPENAI_KEY"
KEY = "sk-test-123"
PNG_PREFIX = "data:image/png;base64,"


def png(color: tuple[int, int, int], size: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def serve():
    servers: list[FakeServer] = []

    def start(behaviour: Callable[[dict, dict], Action]) -> FakeServer:
        servers.append(FakeServer(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY_ENV


class Sleeps(list):
    """Injected sleep: records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(server: FakeServer, api_key_env: str | None, **kwargs) -> tuple[OpenAIClient, Sleeps]:
    sleeps = Sleeps()
    kwargs.setdefault("timeout_s", 5.0)
    client = OpenAIClient(server.base_url, "test-model", api_key_env=api_key_env, sleep=sleeps, **kwargs)
    return client, sleeps


def prompt_of(payload: dict) -> str:
    return payload["messages"][-1]["content"][-1]["text"]


def images_of(payload: dict) -> list[bytes]:
    parts = payload["messages"][-1]["content"][:-1]
    urls = [part["image_url"]["url"] for part in parts]
    assert all(part["type"] == "image_url" for part in parts)
    assert all(url.startswith(PNG_PREFIX) for url in urls)
    return [base64.b64decode(url[len(PNG_PREFIX) :]) for url in urls]


# -- happy path ---------------------------------------------------------------------------


def test_happy_path_images_in_order_auth_and_usage(serve, key):
    red, green, blue = png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255))
    requests = [
        LVLMRequest(prompt="p0"),
        LVLMRequest(prompt="p1", images=(red,)),
        LVLMRequest(prompt="p2", images=(green, blue), system="You judge progress."),
        LVLMRequest(prompt="p3", images=(blue, red), max_new_tokens=7),
        LVLMRequest(prompt="p4", images=(green,)),
    ]
    sent = {r.prompt: r for r in requests}
    problems: list[str] = []

    def behaviour(payload: dict, headers: dict) -> Action:
        prompt = prompt_of(payload)
        request = sent[prompt]
        if headers.get("authorization") != f"Bearer {KEY}":
            problems.append(f"auth {headers.get('authorization')!r}")
        if images_of(payload) != list(request.images):
            problems.append(f"images of {prompt}")
        if payload["model"] != "test-model" or payload["max_tokens"] != request.max_new_tokens:
            problems.append(f"model/max_tokens of {prompt}")
        if payload["temperature"] != 0.0 or payload["seed"] != 0:
            problems.append(f"sampling of {prompt}")
        roles = [m["role"] for m in payload["messages"]]
        if roles != (["system", "user"] if request.system else ["user"]):
            problems.append(f"roles {roles}")
        index = int(prompt[1:])
        return ok(f"answer {prompt}", prompt_tokens=100 + index, completion_tokens=index)

    server = serve(behaviour)
    client, sleeps = make_client(server, key)
    with client:
        assert isinstance(client, LVLMClient)
        assert client.backend == "openai"
        assert client.check_reachable() == 200
        responses = client.generate(requests)
    assert problems == []
    assert len(server.posts) == 5
    assert [r.text for r in responses] == [f"answer p{i}" for i in range(5)]
    assert [(r.prompt_tokens, r.completion_tokens) for r in responses] == [(100 + i, i) for i in range(5)]
    assert all(r.meta["retries"] == 0 and r.meta["failures"] == [] for r in responses)
    assert responses[0].meta["finish_reason"] == "stop"
    assert sleeps == []
    system = server.posts[[prompt_of(p) for p, _ in server.posts].index("p2")][0]["messages"][0]
    assert system == {"role": "system", "content": "You judge progress."}


def test_no_auth_header_without_key_and_usage_defaults(serve):
    seen: list[str | None] = []

    def behaviour(payload: dict, headers: dict) -> Action:
        seen.append(headers.get("authorization"))
        return 200, {}, json.dumps({"choices": [{"message": {"content": "x"}}]}).encode()

    client, _ = make_client(serve(behaviour), None, seed=None)
    with client:
        (response,) = client.generate([LVLMRequest(prompt="q")])
    assert seen == [None]
    assert (response.text, response.prompt_tokens, response.completion_tokens) == ("x", 0, 0)


def test_generation_settings_leave_out_base_url(key):
    a = OpenAIClient("http://127.0.0.1:1/v1", "m", api_key_env=key, temperature=0.5, seed=3)
    b = OpenAIClient("https://example.invalid/v1/", "m", api_key_env=key, temperature=0.5, seed=3)
    c = OpenAIClient("http://127.0.0.1:1/v1", "m", api_key_env=key, temperature=0.5, seed=4)
    assert a.generation_settings() == b.generation_settings() != c.generation_settings()
    assert a.generation_settings()["temperature"] == 0.5
    assert "base_url" not in a.generation_settings()
    for client in (a, b, c):
        client.close()


# -- faults -------------------------------------------------------------------------------

FAULTS_THEN_OK: list[Action] = [
    (429, {"Retry-After": "0"}, b'{"error": "rate limited"}'),
    (500, {}, b"internal error"),
    (200, {"Content-Type": "application/json"}, b"<html>not json"),
    "hang",
    ok("finally"),
]


def scripted(script: list[Action]) -> Callable[[dict, dict], Action]:
    """Answers the next action of the script per POST (the last one repeats)."""
    lock = threading.Lock()
    state = {"i": 0}

    def behaviour(payload: dict, headers: dict) -> Action:
        with lock:
            i = min(state["i"], len(script) - 1)
            state["i"] += 1
        return script[i]

    return behaviour


def test_faults_in_turn_are_retried_with_reasons(serve, key):
    server = serve(scripted(FAULTS_THEN_OK))
    client, sleeps = make_client(server, key, timeout_s=1.5, backoff_base_s=1.0, backoff_max_s=30.0)
    with client:
        (response,) = client.generate([LVLMRequest(prompt="q")])
    assert response.text == "finally"
    assert response.meta["retries"] == 4
    assert response.meta["failures"] == ["429", "500", "malformed", "timeout"]
    assert len(server.posts) == 5
    # Retry-After: 0 honoured, then full jitter within min(max, base * 2**attempt).
    assert len(sleeps) == 4 and sleeps[0] == 0
    for attempt, delay in enumerate(sleeps[1:], start=1):
        assert 0 <= delay <= 2**attempt


def test_retry_after_is_capped_and_jitter_bounded(serve, key):
    script: list[Action] = [(503, {"Retry-After": "120"}, b""), (429, {}, b""), ok("done")]
    client, sleeps = make_client(serve(scripted(script)), key, backoff_base_s=10.0, backoff_max_s=15.0)
    with client:
        (response,) = client.generate([LVLMRequest(prompt="q")])
    assert response.text == "done" and response.meta["failures"] == ["503", "429"]
    assert sleeps[0] == 15.0  # Retry-After capped at backoff_max_s
    assert 0 <= sleeps[1] <= 15.0  # min(15, 10 * 2**1)


def test_retries_exhausted_raise(serve, key):
    server = serve(scripted(FAULTS_THEN_OK))
    client, sleeps = make_client(server, key, max_retries=2)
    with client, pytest.raises(LVLMError, match=r"3 attempt.*429, 500, malformed"):
        client.generate([LVLMRequest(prompt="q")])
    assert len(server.posts) == 3 and len(sleeps) == 2


def test_return_exceptions_keeps_the_good_ones(serve, key):
    def behaviour(payload: dict, headers: dict) -> Action:
        prompt = prompt_of(payload)
        return (500, {}, b"always broken") if prompt == "bad" else ok(f"ok {prompt}")

    server = serve(behaviour)
    client, _ = make_client(server, key, max_retries=2, max_concurrency=2)
    requests = [LVLMRequest(prompt=p) for p in ("a", "bad", "c", "d")]
    with client:
        results = client.generate(requests, return_exceptions=True)
        assert [type(r) for r in results] == [LVLMResponse, LVLMError, LVLMResponse, LVLMResponse]
        assert [r.text for r in results if isinstance(r, LVLMResponse)] == ["ok a", "ok c", "ok d"]
        assert "500" in str(results[1]) and "always broken" in str(results[1])
        with pytest.raises(LVLMError, match="500"):
            client.generate(requests)
    assert sum(prompt_of(p) == "bad" for p, _ in server.posts) == 6  # 3 attempts per generate


def test_bad_request_fails_at_once(serve, key):
    server = serve(lambda payload, headers: (400, {}, b'{"error": "unknown field: foo"}' + b"x" * 500))
    client, sleeps = make_client(server, key, max_retries=5)
    with client, pytest.raises(LVLMError) as info:
        client.generate([LVLMRequest(prompt="q")])
    message = str(info.value)
    assert "400" in message and "unknown field: foo" in message and "x" * 300 not in message
    assert len(server.posts) == 1 and sleeps == []


# -- concurrency --------------------------------------------------------------------------


def test_concurrency_is_bounded(serve, key):
    def behaviour(payload: dict, headers: dict) -> Action:
        time.sleep(0.2)
        return ok(f"ok {prompt_of(payload)}")

    server = serve(behaviour)
    client, _ = make_client(server, key, max_concurrency=4)
    with client:
        responses = client.generate([LVLMRequest(prompt=str(i)) for i in range(8)])
    assert [r.text for r in responses] == [f"ok {i}" for i in range(8)]
    assert 1 < server.max_in_flight <= 4


# -- bad input ----------------------------------------------------------------------------


def test_missing_key_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(LVLMError, match=rf"{KEY_ENV}.*export {KEY_ENV}=.*null"):
        OpenAIClient("http://127.0.0.1:8000/v1", "m", api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, "  ")
    with pytest.raises(LVLMError, match=KEY_ENV):
        OpenAIClient("http://127.0.0.1:8000/v1", "m", api_key_env=KEY_ENV)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"base_url": "localhost:8000"}, "base_url"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_invalid_parameters(kwargs, name):
    arguments = {"base_url": "http://127.0.0.1:8000/v1", "model": "m", "api_key_env": None, **kwargs}
    with pytest.raises(ValueError, match=rf"{name}={kwargs[name]!r}"):
        OpenAIClient(**arguments)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server(key):
    url = f"http://127.0.0.1:{free_port()}/v1"
    sleeps = Sleeps()
    with OpenAIClient(url, "m", api_key_env=key, max_retries=1, timeout_s=2.0, sleep=sleeps) as client:
        with pytest.raises(LVLMError, match=rf"{url}.*Fix"):
            client.check_reachable()
        with pytest.raises(LVLMError, match=r"connection, connection"):
            client.generate([LVLMRequest(prompt="q")])
    assert len(sleeps) == 1


def test_any_http_answer_counts_as_reachable(serve, key):
    server = serve(lambda payload, headers: ok("x"))
    root = server.base_url.removesuffix("/v1")  # /models is 404 there
    with OpenAIClient(root, "m", api_key_env=key) as client:
        assert client.check_reachable() == 404


# -- transport and decoding faults: each a recorded reason, retried; only LVLMError escapes ------


def raw(head: str, *parts: bytes, gap_s: float = 0.0) -> Callable:
    """A raw HTTP/1.1 answer: ``head`` (status line and headers), then ``parts``, ``gap_s`` apart.

    The server closes the connection after a raw answer, so the head says ``Connection: close``:
    otherwise the client may pool the connection and send its retry down a socket the server is
    closing, adding a ``protocol`` failure that depends on which side is faster."""
    if head.startswith("HTTP/") and "\nconnection:" not in head.lower():
        head += "Connection: close\n"

    def write(wfile, stop: threading.Event) -> None:
        wfile.write(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in parts:
            if gap_s and stop.wait(gap_s):
                return
            wfile.write(part)
            wfile.flush()

    return write


GOOD = json.dumps(completion("fine")).encode()


@pytest.mark.parametrize("fault, reason", [
    (raw("HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Encoding: gzip\nContent-Length: 15\n",
         b"this is no gzip"), "decoding"),
    (raw(f"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: {len(GOOD)}\n", GOOD[:30]),
     "protocol"),  # the connection closes mid-JSON
    (raw("HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 30\n", GOOD[:30]), "malformed"),
    (raw("HTTP/1.1 302 Found\nLocation: /v1/chat/completions\nContent-Length: 0\n"), "redirect"),
    (raw("HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 999999999\n", b"{"), "too_large"),
    (raw("HTTP/1.1 200 OK\nContent-Type: application/json\nConnection: close\n", b"[" * 5000, b" " * 5000),
     "too_large"),  # no length declared: the bytes read are capped
    (raw("HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 7000\n", b"[" * 7000), "malformed"),
    (raw("HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 2\n", b"{}"), "malformed"),
    (raw("HTTP/1.1 200 OK\nContent-Length: 2\n"), "protocol"),  # headers, then nothing
    (raw("garbage\n"), "protocol"),
], ids=["corrupt-encoding", "cut-mid-json", "truncated-json", "redirect-loop", "declared-huge", "streamed-huge",
        "deep-nesting", "no-content", "no-body", "not-http"])
def test_every_fault_is_a_recorded_retried_reason(serve, key, fault, reason):
    server = serve(scripted([fault, ok("finally")]))
    client, sleeps = make_client(server, key, timeout_s=2.0, max_body_bytes=8192)
    with client:
        (response,) = client.generate([LVLMRequest(prompt="q")])
    assert response.text == "finally" and response.meta["failures"] == [reason]
    assert len(server.posts) == 2 and len(sleeps) == 1
    # Retries exhausted: an LVLMError naming the reason, raised or returned, nothing else.
    server = serve(scripted([fault]))
    client, _ = make_client(server, key, timeout_s=2.0, max_body_bytes=8192, max_retries=1)
    with client:
        with pytest.raises(LVLMError, match=rf"2 attempt\(s\) \[{reason}, {reason}\]"):
            client.generate([LVLMRequest(prompt="q")])
        (error,) = client.generate([LVLMRequest(prompt="q")], return_exceptions=True)
    assert isinstance(error, LVLMError)


def test_a_trickled_body_is_cut_at_the_attempt_deadline(serve, key):
    # One byte every 0.05 s: each read is far inside timeout_s, the whole body (10 s) far past
    # the deadline. Before the deadline existed this held the attempt for the full 10 s.
    trickle = raw(f"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: {len(GOOD)}\n",
                  *[bytes([b]) for b in GOOD], gap_s=0.05)
    server = serve(scripted([trickle]))
    client, _ = make_client(server, key, timeout_s=1.0, deadline_s=0.4, max_retries=1)
    started = time.monotonic()
    with client, pytest.raises(LVLMError, match=r"\[deadline, deadline\]"):
        client.generate([LVLMRequest(prompt="q")])
    assert time.monotonic() - started < 1.5  # two attempts of 0.4 s, not 2 x 10 s


def test_the_deadline_holds_on_a_reused_keep_alive_connection(serve, key):
    trickle = raw(f"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: {len(GOOD)}\n",
                  *[bytes([b]) for b in GOOD], gap_s=0.05)
    server = serve(scripted([ok("warm"), trickle]))
    client, _ = make_client(server, key, timeout_s=1.0, deadline_s=0.4, max_retries=0)
    with client:
        assert client.generate([LVLMRequest(prompt="q")])[0].text == "warm"  # the connection is pooled
        started = time.monotonic()
        (error,) = client.generate([LVLMRequest(prompt="q")], return_exceptions=True)
    assert isinstance(error, LVLMError) and "[deadline]" in str(error)
    assert time.monotonic() - started < 1.2


def test_a_server_silent_before_its_headers_is_cut_at_the_deadline(serve, key):
    client, _ = make_client(serve(scripted(["hang"])), key, timeout_s=5.0, deadline_s=0.3, max_retries=0)
    started = time.monotonic()
    with client:
        (error,) = client.generate([LVLMRequest(prompt="q")], return_exceptions=True)
    assert isinstance(error, LVLMError) and "deadline" in str(error)
    assert time.monotonic() - started < 1.5


def test_a_request_that_cannot_be_sent_is_an_lvlm_error(serve, key):
    client, _ = make_client(serve(scripted([ok("x")])), key)
    with client:
        results = client.generate([LVLMRequest(prompt="q", images=("not bytes",)), LVLMRequest(prompt="fine")],
                                  return_exceptions=True)
        with pytest.raises(LVLMError, match="unexpected TypeError"):
            client.generate([LVLMRequest(prompt="q", images=(None,))])
    assert isinstance(results[0], LVLMError) and results[1].text == "x"


def test_deadline_and_body_cap_are_checked(key):
    for kwargs, name in (({"deadline_s": 0}, "deadline_s"), ({"deadline_s": float("inf")}, "deadline_s"),
                         ({"max_body_bytes": 10}, "max_body_bytes")):
        with pytest.raises(ValueError, match=name):
            OpenAIClient("http://127.0.0.1:9/v1", "m", api_key_env=key, **kwargs)


# -- through the response cache: every answer stored as it arrives, every worker busy ----------


def test_answers_received_before_a_failure_are_kept_in_the_cache(serve, key, tmp_path):
    from rgvlm.vlm.cache import CachedClient, ResponseCache

    def behaviour(payload: dict, headers: dict) -> Action:
        prompt = prompt_of(payload)
        if prompt == "bad":
            return 400, {}, b"refused"
        time.sleep(0.2)  # still in flight when the refusal comes back
        return ok(f"ok {prompt}")

    server = serve(behaviour)
    client, _ = make_client(server, key, max_concurrency=4)
    requests = [LVLMRequest(prompt=p) for p in ("a", "bad", "c", "d")]
    cached = CachedClient(client, ResponseCache(tmp_path))
    with client, pytest.raises(LVLMError, match="HTTP 400"):
        cached.generate(requests)
    assert len(ResponseCache(tmp_path)) == 3 and cached.usage.lvlm_calls == 3  # paid for, kept


def test_the_cache_keeps_max_concurrency_requests_in_flight(serve, key, tmp_path):
    from rgvlm.vlm.cache import CachedClient, ResponseCache

    def behaviour(payload: dict, headers: dict) -> Action:
        # Held until more than 16 requests are in flight (or 5 s): a client that lets 32 go at once
        # releases them at once, one that caps below 17 waits; a loaded machine changes neither.
        until = time.monotonic() + 5.0
        while server.max_in_flight <= 16 and time.monotonic() < until:
            time.sleep(0.01)
        return ok("x")

    server = serve(behaviour)
    client, _ = make_client(server, key, max_concurrency=32)
    cached = CachedClient(client, ResponseCache(tmp_path))
    assert cached.chunk_size == 128  # not the 8 a chunk used to hold, which capped what was in flight
    with client:
        cached.generate([LVLMRequest(prompt=f"q{i}") for i in range(64)])
    assert server.max_in_flight > 16
