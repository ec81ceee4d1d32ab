"""An OpenAI-compatible server that injects faults on a seeded schedule, and restarts on cue:
what the labelling soak (``benchmarks/labelling_soak.py``) pushes the labelling path against.

The schedule (:class:`FaultSchedule`) decides each attempt from the prompt and the attempt's
number alone: the ``n``-th request the server receives for a prompt gets ``kind(prompt, n)``, either
``"ok"`` (the prompt's one answer, :func:`answer_text`) or one of the faults

- ``"500"``, ``"503"``: that status, retried by the client as reason ``500`` / ``503``;
- ``"429"``: rate limited, with ``Retry-After`` (reason ``429``);
- ``"drop"``: the headers and half the body, then the connection closes (reason ``protocol``);
- ``"malformed"``: HTTP 200 whose body is not JSON (reason ``malformed``);
- ``"slow"``: no answer until the client gives up at its timeout (reason ``timeout``).

So what a run must see is computable in advance (:meth:`FaultSchedule.expected`): every prompt's
faults are those before its first ``ok``, whatever the timing and however the attempts are spread
over retries and reruns.

A restart (:meth:`FaultServer.restart`, or by itself once ``restart_after`` requests have arrived)
closes the listening socket and every connection and listens again on the same port after
``downtime_s``. Requests it cuts short are its casualties, not the schedule's: an answer being
written is finished first; a request still waiting for its answer (``latency_s``) is cut, logged as
``"restart"`` and does not use up its schedule number (the prompt's next request gets the same
``n``); a request that arrives while the server is going down is cut the same way. Requests the
server never received (refused while it was down, or sent down a connection being closed) it cannot
count: the client records them as ``connection`` or ``protocol`` failures. A ``slow`` request is
left to time out across the restart (cutting it would turn its ``timeout`` into a ``protocol``
failure after the client may already have sent its retry).

Every request received is logged (:attr:`FaultServer.log`: prompt, ``epoch`` (a label the caller
sets, e.g. the stage run), schedule number and kind) and counted by kind (:attr:`FaultServer.counts`).
"""

from __future__ import annotations

import hashlib
import select
import socket
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.support.chat_server import ChatHandler, ChatServer, completion, prompt_of

FAULTS = ("500", "503", "429", "drop", "malformed", "slow")


def answer_text(prompt: str) -> str:
    """The one answer the server gives ``prompt``."""
    return "soak answer " + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class FaultSchedule:
    """Each attempt a fault with probability ``rate``, its kind uniform over ``faults``; decided
    by a hash of (``seed``, attempt number, prompt), so reproducible and independent of timing."""

    seed: int = 0
    rate: float = 0.05
    faults: tuple[str, ...] = FAULTS

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"rate={self.rate}: expected 0 <= rate < 1 (every prompt needs an answer)")
        unknown = set(self.faults) - set(FAULTS)
        if unknown or not self.faults:
            raise ValueError(f"faults={self.faults}: expected a non-empty subset of {FAULTS}")

    def kind(self, prompt: str, attempt: int) -> str:
        """``"ok"`` or the fault of the ``attempt``-th request (from 0) for ``prompt``."""
        digest = hashlib.sha256(f"{self.seed}\0{attempt}\0{prompt}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= self.rate:
            return "ok"
        return self.faults[int.from_bytes(digest[8:16], "big") % len(self.faults)]

    def faults_before_answer(self, prompt: str) -> list[str]:
        """The faults ``prompt`` meets before its answer, in order."""
        kinds = []
        while (kind := self.kind(prompt, len(kinds))) != "ok":
            kinds.append(kind)
        return kinds

    def expected(self, prompts: Iterable[str], max_retries: int) -> dict:
        """What a run of ``prompts`` through a client with ``max_retries`` must meet, restarts aside:
        requests, answers, faults by kind, and the times a prompt's retries are used up
        (``exhausted``: each is a failed stage run, the prompt asked again by the rerun)."""
        faults: Counter[str] = Counter()
        exhausted = answers = 0
        for prompt in prompts:
            kinds = self.faults_before_answer(prompt)
            faults.update(kinds)
            exhausted += len(kinds) // (max_retries + 1)
            answers += 1
        return {"requests": answers + sum(faults.values()), "answers": answers,
                "faults": {kind: faults[kind] for kind in self.faults}, "exhausted": exhausted}


@dataclass
class Entry:
    """One request the server received."""

    prompt: str
    epoch: int
    n: int  # its schedule number (-1: cut by a restart as it arrived)
    kind: str  # "ok", a fault, or "restart"
    aborted: threading.Event = field(default_factory=threading.Event, repr=False)


class FaultServer(ChatServer):
    """A :class:`ChatServer` answering on ``schedule`` (module docstring). ``latency_s``: how long
    every request waits for its answer (a model's time: what a restart can cut); ``retry_after``:
    the ``Retry-After`` of a 429; ``restart_after``: restart once this many requests have arrived
    (None: only when :meth:`restart` is called); ``slow_cap_s``: the longest a ``slow`` request is
    held when the client never gives up."""

    def __init__(self, schedule: FaultSchedule, latency_s: float = 0.0, retry_after: str = "1",
                 restart_after: int | None = None, downtime_s: float = 0.2, slow_cap_s: float = 120.0,
                 port: int = 0):
        self.schedule = schedule
        self.latency_s, self.retry_after, self.slow_cap_s = latency_s, retry_after, slow_cap_s
        self.restart_after, self.downtime_s = restart_after, downtime_s
        self.epoch = 0
        self.log: list[Entry] = []
        self.counts: Counter[str] = Counter()  # requests received, by kind ("ok", faults, "restart")
        self.restarts = 0
        self.restart_epochs: list[int] = []  # the epoch each restart happened in
        self._next: Counter[str] = Counter()  # each prompt's next schedule number
        self._cond = threading.Condition()
        self._waiting: dict[int, Entry] = {}  # requests waiting for their answer, by handler id
        self._slow: dict[int, socket.socket] = {}  # connections held by a slow fault, by handler id
        self._writing = 0
        self._restarting = False
        self._up = threading.Event()
        self._up.set()
        self._restart_threads: list[threading.Thread] = []
        super().__init__(_FaultHandler, port)

    @property
    def requests(self) -> int:
        return len(self.log)

    def wait_up(self, timeout_s: float = 30.0) -> bool:
        """Whether the server listens (waiting for a restart in progress to end)."""
        return self._up.wait(timeout_s)

    # -- the handler's side ------------------------------------------------------------------------
    def _arrive(self, prompt: str, handler: int) -> tuple[Entry, bool]:
        """Log a request; (its entry, whether it is to be answered)."""
        start_restart = False
        with self._cond:
            if self._restarting:
                entry = Entry(prompt, self.epoch, -1, "restart")
            else:
                n = self._next[prompt]
                self._next[prompt] += 1
                entry = Entry(prompt, self.epoch, n, self.schedule.kind(prompt, n))
                self._waiting[handler] = entry
            self.log.append(entry)
            self.counts[entry.kind] += 1
            if self.restart_after is not None and len(self.log) == self.restart_after:
                start_restart = True
        if start_restart:
            thread = threading.Thread(target=self.restart, daemon=True, name="fault-server-restart")
            self._restart_threads.append(thread)
            thread.start()
        return entry, entry.kind != "restart"

    def _start_writing(self, handler: int, entry: Entry) -> bool:
        """Whether the answer may be written (False: a restart cut the request meanwhile)."""
        with self._cond:
            self._waiting.pop(handler, None)
            if entry.aborted.is_set():
                return False
            self._writing += 1
            return True

    def _done_writing(self) -> None:
        with self._cond:
            self._writing -= 1
            self._cond.notify_all()

    # -- restart -------------------------------------------------------------------------------------
    def restart(self, downtime_s: float | None = None, keep: set[socket.socket] = frozenset()) -> None:
        """Cut what waits for an answer, let what is being written finish, then close everything
        (but the slow faults' connections) and listen again after ``downtime_s``."""
        with self._cond:
            self._restarting = True
            self._up.clear()
            self.restart_epochs.append(self.epoch)
            for entry in self._waiting.values():
                if entry.kind == "slow":
                    continue
                self.counts[entry.kind] -= 1
                self.counts["restart"] += 1
                entry.kind = "restart"
                self._next[entry.prompt] -= 1  # its number goes to the prompt's next request
                entry.n = -1
                entry.aborted.set()
            self._waiting.clear()
            self._cond.wait_for(lambda: self._writing == 0, timeout=30)
            keep = set(keep) | set(self._slow.values())
        super().restart(self.downtime_s if downtime_s is None else downtime_s, keep)
        with self._cond:
            self._restarting = False
            self.restarts += 1
        self._up.set()

    def close(self) -> None:
        for thread in self._restart_threads:
            thread.join(timeout=30)
        super().close()


class _FaultHandler(ChatHandler):
    def do_POST(self) -> None:
        server: FaultServer = self.owner
        try:
            payload = self.read_json()
        except ValueError:  # the body was cut short (a restart closing the connection): never received
            self.close_connection = True
            return
        if payload is None:
            return
        prompt = prompt_of(payload)
        me = id(self)
        entry, answer = server._arrive(prompt, me)
        if not answer:
            self.close_connection = True  # cut as it arrived: no answer
            return
        if entry.kind == "slow":
            self._hold_until_the_client_leaves(server, me)
            with server._cond:
                server._waiting.pop(me, None)
            self.close_connection = True
            return
        if server.latency_s:
            entry.aborted.wait(server.latency_s)
        if not server._start_writing(me, entry):
            self.close_connection = True
            return
        try:
            self._answer(server, entry)
        finally:
            server._done_writing()

    def _hold_until_the_client_leaves(self, server: FaultServer, me: int) -> None:
        """Wait, answering nothing, until the client closes the connection (its timeout)."""
        with server._cond:
            server._slow[me] = self.connection
        try:
            waited = 0.0
            while waited < server.slow_cap_s and not server.stop.is_set():
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                waited += 0.05
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return  # the client gave up and closed
        except OSError:
            return
        finally:
            with server._cond:
                server._slow.pop(me, None)

    def _answer(self, server: FaultServer, entry: Entry) -> None:
        kind = entry.kind
        if kind == "ok":
            body = completion(answer_text(entry.prompt), prompt_tokens=100, completion_tokens=8)
            self.send(200, {"Content-Type": "application/json"}, _json(body))
        elif kind in ("500", "503"):
            self.send(int(kind), {"Content-Type": "text/plain"}, f"injected {kind}".encode())
        elif kind == "429":
            self.send(429, {"Content-Type": "application/json", "Retry-After": server.retry_after},
                      b'{"error": {"message": "rate limited (injected)"}}')
        elif kind == "malformed":
            self.send(200, {"Content-Type": "application/json"}, b'{"choices": [{"message": {"content": "cut')
        elif kind == "drop":
            body = _json(completion(answer_text(entry.prompt)))
            self.close_connection = True
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
            except OSError:
                pass
        else:  # pragma: no cover - the schedule's kinds are checked
            raise AssertionError(kind)


def _json(body: dict) -> bytes:
    import json

    return json.dumps(body).encode()
