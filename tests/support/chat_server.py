"""Local OpenAI-compatible chat-completions servers (stdlib ``http.server``, 127.0.0.1), for the
tests of the OpenAI client and the labelling soak (``benchmarks/labelling_soak.py``).

- :class:`ChatServer`: ``GET /v1/models`` and ``POST /v1/chat/completions`` served from a daemon
  thread, one thread per connection; it knows its open connections, so that :meth:`ChatServer.restart`
  can close the listening socket and every connection, and listen again on the same port.
- :class:`FakeServer`: a :class:`ChatServer` whose answers a ``behaviour(payload, headers)``
  callback chooses (:data:`Action`).
- :class:`tests.support.fault_server.FaultServer`: one that injects faults on a seeded schedule.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def completion(text: str, prompt_tokens: int = 11, completion_tokens: int = 3) -> dict:
    """A chat-completions answer whose message is ``text``."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


# An action is (status, headers, body bytes), the string "hang", or a raw fault: a callable
# given the socket's writer and the server's stop event.
Action = tuple[int, dict[str, str], bytes] | str | Callable


def ok(text: str, **usage: int) -> Action:
    return 200, {"Content-Type": "application/json"}, json.dumps(completion(text, **usage)).encode()


def prompt_of(payload: dict) -> str:
    """The text of a chat-completions request's last content part (the prompt)."""
    return payload["messages"][-1]["content"][-1]["text"]


class _Listener(ThreadingHTTPServer):
    """A threading HTTP server that keeps the set of its open connections."""

    daemon_threads = True
    # socketserver's default backlog (5) drops the SYNs of a burst of new connections when the
    # accepting thread is slow to run: the client's connect then waits for SYN retransmits (1 s, 3 s, ...).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: ChatServer):
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that reset or closed its connection: nothing to report
        super().handle_error(request, client_address)


class ChatHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, quiet; ``self.owner`` is the :class:`ChatServer`."""

    protocol_version = "HTTP/1.1"
    # http.server writes the headers and the body separately: with Nagle on, the body waits for
    # the client's delayed ACK (40 ms on Linux), which no real API adds.
    disable_nagle_algorithm = True

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # client gave up (timeout) before we answered
            self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self.send(200, {"Content-Type": "application/json"}, b'{"object":"list","data":[]}')
        else:
            self.send(404, {}, b"not found")

    def read_json(self) -> dict | None:
        """The POSTed JSON body, or None (answered 404) when the path is not chat completions."""
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/chat/completions":
            self.send(404, {}, b"not found")
            return None
        return json.loads(body)


class ChatServer:
    """An OpenAI-compatible server on 127.0.0.1 (``port`` 0: any free one), at :attr:`base_url`,
    answering with ``handler`` (a :class:`ChatHandler`)."""

    def __init__(self, handler: type[ChatHandler], port: int = 0):
        self.handler = handler
        self.stop = threading.Event()
        self._listen(port)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def _listen(self, port: int) -> None:
        self.httpd = _Listener(("127.0.0.1", port), self.handler, self)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _stop_listening(self, keep: set[socket.socket] = frozenset()) -> None:
        """Close the listening socket, then every open connection but those in ``keep``."""
        httpd = self.httpd
        httpd.shutdown()
        httpd.server_close()
        self.thread.join(timeout=5)
        with httpd.connections_lock:
            open_now = set(httpd.connections) - set(keep)
        for connection in open_now:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed meanwhile

    def restart(self, downtime_s: float = 0.1, keep: set[socket.socket] = frozenset()) -> None:
        """Stop listening and close every connection (but ``keep``), wait ``downtime_s`` (connections
        are refused meanwhile), then listen again on the same port."""
        self._stop_listening(keep)
        time.sleep(downtime_s)
        self._listen(self.port)  # SO_REUSEADDR (http.server's default): the port's TIME_WAITs do not block it

    def close(self) -> None:
        self.stop.set()
        self._stop_listening()


class FakeServer(ChatServer):
    """OpenAI-compatible stub: ``/v1/models`` and ``/v1/chat/completions`` answered by ``behaviour``
    (an :data:`Action` per POST). Records every POST (``posts``: JSON body and lower-cased headers)
    and the most requests it held at once (``max_in_flight``)."""

    def __init__(self, behaviour: Callable[[dict, dict], Action], port: int = 0):
        self.behaviour = behaviour
        self.lock = threading.Lock()
        self.posts: list[tuple[dict, dict]] = []  # (json body, headers)
        self.in_flight = 0
        self.max_in_flight = 0
        super().__init__(_FakeHandler, port)


class _FakeHandler(ChatHandler):
    def do_POST(self) -> None:
        server = self.owner
        payload = self.read_json()
        if payload is None:
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        with server.lock:
            server.posts.append((payload, headers))
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            action = server.behaviour(payload, headers)
        finally:
            with server.lock:
                server.in_flight -= 1
        if action == "hang":
            server.stop.wait(10.0)  # released at teardown
            self.close_connection = True
            return
        if callable(action):  # a raw fault: writes the response (or not) itself
            self.close_connection = True
            try:
                action(self.wfile, server.stop)
            except OSError:  # the client gave up first
                pass
            return
        self.send(*action)
