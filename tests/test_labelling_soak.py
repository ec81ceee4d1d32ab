"""The labelling soak (issue 27, item 6): benchmarks/labelling_soak.py at 1,000 prompts, and the
fault server it runs against (its seeded schedule, each fault's reason at the client, a restart's
casualties). No timing is asserted."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from rgvlm.vlm.base import LVLMError, LVLMRequest
from rgvlm.vlm.openai_backend import OpenAIClient
from tests.support.fault_server import FAULTS, FaultSchedule, FaultServer, answer_text
from tests.test_benchmarks import _load  # the benchmarks' loader, one home


def test_the_schedule_is_seeded_mixed_and_its_expectation_adds_up():
    schedule = FaultSchedule(seed=3, rate=0.05)
    prompts = [f"prompt {i}" for i in range(4000)]
    kinds = [schedule.kind(p, n) for p in prompts for n in range(5)]
    assert kinds == [FaultSchedule(seed=3, rate=0.05).kind(p, n) for p in prompts for n in range(5)]
    assert kinds != [FaultSchedule(seed=4, rate=0.05).kind(p, n) for p in prompts for n in range(5)]
    counts = Counter(kinds)
    assert 0.04 < 1 - counts["ok"] / len(kinds) < 0.06
    assert set(counts) == {"ok", *FAULTS} and min(counts[k] for k in FAULTS) > 100

    expected = schedule.expected(prompts, max_retries=1)
    leading = [schedule.faults_before_answer(p) for p in prompts]
    assert expected["answers"] == len(prompts)
    assert expected["faults"] == {k: sum(f.count(k) for f in leading) for k in FAULTS}
    assert expected["requests"] == len(prompts) + sum(len(f) for f in leading)
    assert expected["exhausted"] == sum(len(f) // 2 for f in leading) > 0
    assert schedule.expected(prompts, max_retries=5)["exhausted"] == sum(len(f) // 6 for f in leading)
    with pytest.raises(ValueError):
        FaultSchedule(rate=1.0)
    with pytest.raises(ValueError):
        FaultSchedule(faults=("418",))


def _prompt_meeting(schedule: FaultSchedule, first: str) -> str:
    """A prompt whose first request meets ``first`` and whose second is answered."""
    return next(p for p in (f"p{i}" for i in range(10_000))
                if schedule.kind(p, 0) == first and schedule.kind(p, 1) == "ok")


def test_each_fault_is_the_reason_the_client_records():
    bench = _load("labelling_soak")
    schedule = FaultSchedule(seed=0, rate=0.5)
    prompts = {kind: _prompt_meeting(schedule, kind) for kind in FAULTS}
    server = FaultServer(schedule, retry_after="0")
    client = OpenAIClient(server.base_url, "m", api_key_env=None, timeout_s=1.0, max_retries=1,
                          max_concurrency=len(FAULTS), sleep=lambda s: None)
    try:
        answers = client.generate([LVLMRequest(prompt=p) for p in prompts.values()])
        for (kind, prompt), answer in zip(prompts.items(), answers, strict=True):
            assert answer.text == answer_text(prompt)
            assert len(answer.meta["failures"]) == 1 and answer.meta["failures"][0] in bench.REASONS[kind], kind
        assert server.counts == Counter({"ok": len(FAULTS), **{kind: 1 for kind in FAULTS}})
        assert [e.n for e in server.log if e.prompt == prompts["503"]] == [0, 1]
        # A prompt whose first two requests fail uses up max_retries=1: an LVLMError naming both.
        doomed = next(p for p in (f"q{i}" for i in range(10_000))
                      if schedule.kind(p, 0) == "500" and schedule.kind(p, 1) == "503")
        with pytest.raises(LVLMError, match=r"2 attempt\(s\) \[500, 503\]"):
            client.generate([LVLMRequest(prompt=doomed)])
    finally:
        client.close()
        server.close()


def test_a_restart_cuts_what_waits_and_keeps_the_schedule():
    """A request waiting for its answer when the server restarts is cut (the client records a
    protocol failure), logged as a restart, and its schedule number goes to its retry, which is
    answered on the same port after the restart."""
    schedule = FaultSchedule(seed=0, rate=0.0)
    server = FaultServer(schedule, latency_s=30.0, downtime_s=0.1)
    client = OpenAIClient(server.base_url, "m", api_key_env=None, timeout_s=20.0, max_retries=3,
                          sleep=lambda s: time.sleep(0.3))  # retried once the server is back
    result: dict = {}

    def ask() -> None:
        result["answer"] = client.generate([LVLMRequest(prompt="waiting")])[0]

    asker = threading.Thread(target=ask)
    try:
        asker.start()
        deadline = time.monotonic() + 60
        while not server.log and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.log, "the request never arrived"
        server.latency_s = 0.0  # the retry is answered at once
        server.restart()
        asker.join(timeout=60)
        answer = result["answer"]
        assert answer.text == answer_text("waiting")
        assert answer.meta["failures"][0] == "protocol"
        assert set(answer.meta["failures"]) <= {"protocol", "connection"}
        assert [(e.kind, e.n) for e in server.log] == [("restart", -1), ("ok", 0)]
        assert server.restarts == 1 and server.restart_epochs == [0]
    finally:
        asker.join(timeout=5)
        client.close()
        server.close()


def test_align_tells_unseen_requests_from_mismatches():
    bench = _load("labelling_soak")
    assert bench.align(["500", "ok"], ["500", "ok"]) == (0, 0)
    assert bench.align(["connection", "timeout", "ok"], ["slow", "ok"]) == (1, 0)
    assert bench.align(["protocol", "protocol", "ok"], ["drop", "ok"]) == (1, 0)
    assert bench.align(["protocol", "ok"], ["restart", "ok"]) == (0, 0)
    assert bench.align(["timeout", "ok"], ["ok", "ok"]) == (0, 1)  # an answer the client gave up on
    assert bench.align(["deadline", "ok"], ["ok"]) == (1, 0)  # a connection the server never accepted
    assert bench.align(["deadline", "ok"], ["slow", "ok"]) == (0, 0)
    assert bench.align(["ok"], ["500", "ok"]) is None  # a fault the client did not record
    assert bench.align(["500", "500"], ["500"]) is None
    assert bench.align(["malformed", "ok"], ["500", "ok"]) is None


@pytest.mark.slow
def test_soak_at_a_thousand_prompts(tmp_path):
    """1,000 prompts, 32 in flight, 5% mixed faults, one restart: every check of the soak holds."""
    bench = _load("labelling_soak")
    out = tmp_path / "soak.json"
    code = bench.main(["--requests", "1000", "--concurrency", "32", "--fault-rate", "0.05", "--timeout-s", "5",
                       "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["violations"] == [] and code == 0
    stage = report["stage"]
    assert stage["answers_in_cache"] == stage["lvlm_calls"] == 1000
    # One answer each, plus those the client gave up on (its timeout, on a starved machine): counted.
    late = stage["late_answers_in_answered_runs"] + stage["late_answers_in_failed_runs"]
    assert report["server"]["answers"] == 1000 + late
    assert report["server"]["faults"] == report["expected"]["faults"] and all(report["server"]["faults"].values())
    assert report["server"]["restarts"] == 1
    assert report["stage"]["stage_runs"] == report["stage"]["failed_runs"] + 1
    assert report["stage"]["prompts_that_used_up_their_retries"] >= report["expected"]["exhausted"]
