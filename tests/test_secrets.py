"""The API key never lands in a file or a message (issue 27, item 4).

A real `dvc repro label@rg_vlm` on the tiny profile, with the OpenAI-compatible backend, against a
local server on 127.0.0.1 that checks the key and is hostile with it: its stage-1 answers quote the
Authorization header they received (so a careless client would cache the key), and in a second run
it refuses every request with a 401 whose body echoes the header (so a careless client would print
it in its error). Then every file of the clone -- outputs/, reports/, the executed notebooks, DVC's
own files and the captured stdout/stderr of the runs -- is searched for the key.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from rgvlm.params import load_profile
from tests.tiny_project import run, tiny_clone

pytestmark = pytest.mark.slow

KEY_ENV = "RGVLM_TEST_API_KEY"


class HostileServer:
    """/v1/chat/completions: stage-1 prompts get an analysis quoting the Authorization header,
    stage-2 prompts valid scores; with ``refuse`` set, a 401 echoing the header instead."""

    def __init__(self, key: str):
        self.key, self.refuse, self.seen_keys, self.posts = key, False, set(), 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, b'{"object": "list", "data": []}')

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                auth = self.headers.get("Authorization", "")
                server.posts += 1
                server.seen_keys.add(auth)
                if server.refuse or auth != f"Bearer {server.key}":
                    self._send(401, json.dumps({"error": {"message": f"invalid credentials: {auth}"}}).encode())
                    return
                prompt = payload["messages"][-1]["content"][-1]["text"]
                wanted = re.search(r"exactly (\d+) integers", prompt)
                if wanted:
                    text = json.dumps({"scores": [5] * int(wanted[1])})
                else:
                    text = f"The agent moves toward the goal. (Request authorised with {auth}.)"
                body = {"id": "x", "object": "chat.completion", "model": payload["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
                self._send(200, json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and ".git" not in p.relative_to(root).parts[:1] and needle in p.read_bytes())


def test_the_key_is_in_no_file_and_no_message(tmp_path):
    key = "sk-rgvlm-" + secrets.token_hex(16)
    server = HostileServer(key)
    try:
        params = load_profile("tiny")
        params["labelling"].update({"backend": "openai", "model": "hostile-test", "base_url": server.base_url,
                                    "api_key_env": KEY_ENV, "max_concurrency": 2, "timeout_s": 10,
                                    "max_retries": 1, "max_failure_rate": 0.05})
        dst = tmp_path / "rgvlm"
        env = tiny_clone(dst, params)
        env = {**env, KEY_ENV: key}
        logs = tmp_path / "logs"
        logs.mkdir()

        # 1. A labelling stage that succeeds: every request carried the key, some answers quoted it.
        first = run(["dvc", "repro", "label@rg_vlm"], dst, env)
        (logs / "first.out").write_text(first.stdout + first.stderr)
        assert server.seen_keys == {f"Bearer {key}"} and server.posts > 0
        assert files_holding(dst / "outputs" / "lvlm_cache", b"[API key redacted]"), "the server echoed nothing"

        # 2. The server now refuses with a 401 that echoes the key; new prompts (a changed window) ask it.
        server.refuse = True
        params["rg_vlm"]["window_length"] = params["rg_vlm"]["window_stride"] = 4
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        second = run(["dvc", "repro", "label@rg_vlm"], dst, env, check=False)
        (logs / "second.out").write_text(second.stdout + second.stderr)
        assert second.returncode != 0, "the refused stage should fail"
        assert "401" in second.stderr and "[API key redacted]" in second.stderr, second.stderr[-2000:]
    finally:
        server.close()

    leaked = files_holding(dst, key.encode()) + files_holding(logs, key.encode())
    assert not leaked, f"the API key was written to {leaked}"
    executed = dst / "outputs" / "notebooks" / "02_label_rg_vlm.ipynb"
    assert executed.exists() and (dst / "reports" / "notebooks" / "02_label_rg_vlm.html").exists()
    assert "401" in executed.read_text()  # the failed run's notebook, with its error, was searched too
