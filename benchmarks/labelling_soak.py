"""Soak of the labelling path: many prompts through the OpenAI client and the answer cache, as a
label stage builds them, against a local server that injects faults and restarts midway.

    python benchmarks/labelling_soak.py [--requests 10000] [--concurrency 32] [--fault-rate 0.05]
        [--max-retries 1] [--timeout-s 5] [--latency-ms 20] [--no-restart] [--seed 0] [--out PATH]

The server (:class:`tests.support.fault_server.FaultServer`) decides every request from the prompt
and the attempt's number alone: with probability ``--fault-rate`` a fault (HTTP 500 or 503, 429 with
Retry-After, the connection dropped mid-body, a body that is not JSON, no answer before the client's
timeout), else the prompt's one answer; once half the requests the schedule calls for have arrived
it closes its socket and every connection and listens again on the same port. So what must happen
is known from the seed (``expected``).

The clients are :func:`rgvlm.vlm.cached_clients` of a ``labelling`` section (backend openai,
``max_concurrency`` in flight), answering through the response cache, as ``label@<method>`` uses
them. One *stage run* asks every prompt with one ``generate`` call. A prompt whose attempts all fail
(``max_retries`` + 1) makes the run fail with an LVLMError, keeping every answer received; the
stage is then run again (as ``dvc repro`` would be: the stage-start sweep, fresh clients, the same
prompts), until a run ends without error. ``--max-retries`` defaults to 1 so that this path is
taken; the label stages' default (5) would almost never use up a prompt's retries at 5%.

Checked (``violations`` lists what does not hold, empty when all do):

- every prompt has exactly one answer file in the cache, with the text the server produced for it,
  and the cache holds nothing else (no temporary, claim or file set aside); no stage-start sweep
  found anything a failed run left behind;
- no prompt is asked again once its answer is stored; the server sent one answer per prompt, plus
  only those the client had given up on (its timeout passed first: on a starved machine the client's
  own timeouts, counted as ``late``, reported, and paid for twice);
- the server met each kind of fault exactly as often as the seed's schedule says, up to each
  prompt's first answer;
- each answer's recorded failures are, in order, the faults the server injected into that prompt's
  requests of the run that got the answer (a ``timeout`` or ``deadline`` may also be a late
  response), plus only ``connection`` / ``protocol`` failures of requests the server never received
  (refused during the restart) or time limits of connections it never accepted; its ``retries``
  their number;
- each failed run used up the retries of at least one prompt, and its error names the failures of
  the first such prompt (in request order); no used-up prompt got more than ``max_retries`` + 1
  requests to the server (fewer: some never reached it, counted); the used-up prompts the schedule
  calls for (``expected.exhausted``) all happened;
- every run's LVLM calls are the answers it added; its cache hits the answers earlier runs stored.

Reported: requests, answers, faults by kind (expected and injected), restart casualties, retries,
stage runs, wall time, requests/s and answers/s. Timing is measured, never asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.params import labelling_config
from rgvlm.vlm import cached_clients
from rgvlm.vlm.base import LVLMError, LVLMRequest
from rgvlm.vlm.cache import ResponseCache, request_key
from tests.support.fault_server import FaultSchedule, FaultServer, answer_text

MODEL = "soak-model"
# The client's failure reason for each kind the server logs.
REASONS = {"ok": ("ok",), "500": ("500",), "503": ("503",), "429": ("429",), "drop": ("protocol",),
           "malformed": ("malformed",), "slow": ("timeout", "deadline"), "restart": ("protocol", "connection")}
# The client's own time limits: a per-operation timeout, or the attempt's deadline (timeout_s x 3).
TIME_LIMITS = ("timeout", "deadline")
# What a request the server never received looks like: refused, sent down a connection being closed,
# or a connection that did not complete within the client's time limits (a starved server).
UNSEEN = ("connection", "protocol", *TIME_LIMITS)


def soak_prompts(count: int) -> list[str]:
    """``count`` distinct prompts, about as long as a stage-2 prompt."""
    return [f"Soak prompt {i}. Rate the agent's progress in each of the frames shown, as a JSON object "
            f"{{\"scores\": [...]}} with one integer from 0 to 9 per frame. Window {i % 97}, episode {i // 97}."
            for i in range(count)]


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = (np.random.default_rng(seed).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def align(attempts: list[str], kinds: list[str]) -> tuple[int, int] | None:
    """Match a prompt's client-side ``attempts`` (failure reasons, then ``"ok"`` when answered) with
    the ``kinds`` the server logged for them, in order: (requests the server never received, answers
    the client gave up on), or None when they do not match. A client ``timeout`` or ``deadline`` matches
    any kind: the server may have answered after the client's time limit (``late``; only a ``slow``
    fault is injected)."""
    if len(attempts) > 64:  # a prompt's attempts are a few (max_retries + 1 per run)
        return None

    def best(i: int, j: int) -> tuple[int, int] | None:
        """The alignment of attempts[i:] with kinds[j:] with the fewest requests never received."""
        if i == len(attempts):
            return (0, 0) if j == len(kinds) else None
        attempt, options = attempts[i], []
        if j < len(kinds) and (attempt in REASONS[kinds[j]] or attempt in TIME_LIMITS):
            rest = best(i + 1, j + 1)
            if rest is not None:
                options.append((rest[0], rest[1] + (attempt in TIME_LIMITS and kinds[j] != "slow")))
        if attempt in UNSEEN:
            rest = best(i + 1, j)
            if rest is not None:
                options.append((rest[0] + 1, rest[1]))
        return min(options) if options else None

    return best(0, 0)


def _reasons_of(message: str) -> list[str] | None:
    found = re.search(r"failed after \d+ attempt\(s\) \[([^\]]*)\]", message)
    return None if found is None else [r.strip() for r in found[1].split(",") if r.strip()]


def soak(requests: int = 10_000, concurrency: int = 32, fault_rate: float = 0.05, seed: int = 0,
         max_retries: int = 1, timeout_s: float = 5.0, latency_s: float = 0.02, restart: bool = True,
         downtime_s: float = 0.2, cache_dir: Path | None = None, max_runs: int | None = None) -> dict[str, Any]:
    """Run the soak (module docstring); the report, with ``violations`` empty when every check holds."""
    owned = cache_dir is None
    cache_dir = Path(tempfile.mkdtemp(prefix="rgvlm-soak-")) if owned else Path(cache_dir)
    schedule = FaultSchedule(seed=seed, rate=fault_rate)
    prompts = soak_prompts(requests)
    images = [_png(i) for i in range(8)]
    batch = [LVLMRequest(prompt=p, images=(images[i % len(images)],), max_new_tokens=64) for i, p in enumerate(prompts)]
    expected = schedule.expected(prompts, max_retries)
    server = FaultServer(schedule, latency_s=latency_s, restart_after=expected["requests"] // 2 if restart else None,
                         downtime_s=downtime_s, slow_cap_s=3 * timeout_s + 5)
    config = labelling_config({"backend": "openai", "model": MODEL, "base_url": server.base_url, "api_key_env": None,
                               "max_concurrency": concurrency, "timeout_s": timeout_s, "max_retries": max_retries})
    max_runs = max_runs or expected["exhausted"] + concurrency + 5
    runs: list[dict[str, Any]] = []
    answered_in: dict[str, int] = {}  # key -> the run that stored its answer
    keys: list[str] = []
    violations: list[str] = []
    started = time.perf_counter()
    try:
        for run in range(max_runs):
            if not server.wait_up():
                violations.append(f"run {run}: the server did not come back from its restart")
                break
            server.epoch = run
            swept = ResponseCache(cache_dir).sweep()  # what rgvlm.pipeline does before a label stage
            stage1, _, usage = cached_clients(config, cache_dir)
            if not keys:
                settings = stage1.generation_settings()
                keys = [request_key(stage1.backend, stage1.model, settings, r) for r in batch]
            error = None
            t0 = time.perf_counter()
            try:
                stage1.generate(batch)
            except LVLMError as exc:
                error = str(exc)
            finally:
                stage1.client.close()
            seconds = time.perf_counter() - t0
            stored = {p.stem for p in cache_dir.glob("*/*.json")}
            new = stored - set(answered_in)
            for key in new:
                answered_in[key] = run
            runs.append({"run": run, "started_s": round(t0 - started, 3), "seconds": round(seconds, 3), "lvlm_calls": usage.lvlm_calls,
                         "cache_hits": usage.cache_hits, "new_answers": len(new),
                         "swept": sorted(str(p.relative_to(cache_dir)) for p in swept),
                         "error": None if error is None else error[:300], "_error": error})
            if error is None:
                break
        wall = time.perf_counter() - started
    finally:
        server.close()
    report = _check(schedule, prompts, keys, expected, server, runs, answered_in, cache_dir, max_retries, violations)
    report["settings"] = {"requests": requests, "max_concurrency": concurrency, "fault_rate": fault_rate, "seed": seed,
                          "max_retries": max_retries, "timeout_s": timeout_s, "server_latency_s": latency_s,
                          "restart_after_requests": server.restart_after, "restart_downtime_s": downtime_s}
    report["throughput"] = {"wall_s": round(wall, 2), "requests_per_s": round(server.requests / wall, 1),
                            "answers_per_s": round(len(answered_in) / wall, 1)}
    for entry in runs:
        entry.pop("_error")
    report["runs"] = runs
    if owned:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return report


def _check(schedule: FaultSchedule, prompts: list[str], keys: list[str], expected: dict, server: FaultServer,
           runs: list[dict], answered_in: dict[str, int], cache_dir: Path, max_retries: int,
           violations: list[str]) -> dict[str, Any]:
    cache = ResponseCache(cache_dir)
    # 1. The cache: one answer file per prompt, the server's text, nothing else.
    files = {p for p in cache_dir.rglob("*") if p.is_file()}
    wanted = {cache.path(key) for key in keys}
    leftovers = sorted(str(p.relative_to(cache_dir)) for p in files - wanted)
    missing = len(wanted - files)
    if leftovers:
        violations.append(f"{len(leftovers)} file(s) in the cache besides the answers: {leftovers[:5]}")
    if missing:
        violations.append(f"{missing} prompt(s) have no answer in the cache")
    records: dict[int, dict] = {}
    for i, key in enumerate(keys):
        path = cache.path(key)
        if not path.exists():
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        records[i] = record
        if record["text"] != answer_text(prompts[i]):
            violations.append(f"prompt {i}: cached text {record['text']!r} is not the server's answer")
        if record["meta"].get("retries") != len(record["meta"].get("failures", [])):
            violations.append(f"prompt {i}: retries {record['meta'].get('retries')} but failures "
                              f"{record['meta'].get('failures')}")
    for run in runs:
        if run["swept"]:
            violations.append(f"run {run['run']}: the stage-start sweep found debris {run['swept'][:5]}")

    # 2. The server: each fault kind as often as the schedule says, up to each prompt's first answer
    # (after it only when the client gave up on that answer: a late answer, checked in 3).
    by_prompt: dict[str, list] = defaultdict(list)
    for entry in server.log:
        by_prompt[entry.prompt].append(entry)
    scheduled: Counter[str] = Counter()
    after_answer: Counter[str] = Counter()
    for entries in by_prompt.values():
        answered = False
        for entry in entries:
            if entry.kind != "restart":
                (after_answer if answered else scheduled)[entry.kind] += 1
            answered = answered or entry.kind == "ok"
    injected = {kind: scheduled[kind] for kind in schedule.faults}
    if injected != expected["faults"]:
        violations.append(f"faults injected {injected} are not the schedule's {expected['faults']}")

    # 3. Each prompt's requests, run by run, against what the client recorded.
    unseen = late = late_answers = late_in_failed_runs = short_used_up = 0
    exhausted: dict[int, list[int]] = defaultdict(list)  # run -> prompts whose retries it used up
    recorded: Counter[str] = Counter()  # failure reasons in the cached answers
    in_failed_runs: Counter[str] = Counter()  # what the server logged for requests of used-up prompts
    for i, prompt in enumerate(prompts):
        answer_run = answered_in.get(keys[i])
        per_run: dict[int, list[str]] = defaultdict(list)
        for entry in by_prompt[prompt]:
            per_run[entry.epoch].append(entry.kind)
        for run, kinds in sorted(per_run.items()):
            if answer_run is not None and run == answer_run:
                failures = records[i]["meta"].get("failures", []) if i in records else []
                recorded.update(failures)
                matched = align([*failures, "ok"], kinds)
                if matched is None:
                    violations.append(f"prompt {i}, run {run}: recorded failures {failures} do not match the "
                                      f"server's {kinds}")
                else:
                    unseen += matched[0]
                    late += matched[1]
                    late_answers += kinds.count("ok") - 1  # each matched a client timeout
            elif answer_run is not None and run > answer_run:
                violations.append(f"prompt {i}: asked in run {run} after its answer was stored in run {answer_run}")
            else:
                exhausted[run].append(i)
                in_failed_runs.update(kinds)
                late_in_failed_runs += kinds.count("ok")  # the client's failures are in no record: unchecked
                if len(kinds) > max_retries + 1:
                    violations.append(f"prompt {i}, run {run}: {len(kinds)} requests, more than max_retries + 1")
                elif len(kinds) < max_retries + 1:
                    # requests the server never received: refused in the restart, or (any run) a
                    # connection the client's time limit gave up on; the client's reasons are in no record
                    short_used_up += 1
    answers_sent = server.counts["ok"]
    if answers_sent != len(prompts) + late_answers + late_in_failed_runs:
        violations.append(f"the server sent {answers_sent} answers: not one per prompt ({len(prompts)}) plus the "
                          f"{late_answers + late_in_failed_runs} the client gave up on")
    for run in runs:
        used_up = sorted(exhausted.get(run["run"], []))
        message = run["_error"]
        if message is None:
            if used_up:
                violations.append(f"run {run['run']}: prompts {used_up[:5]} used up their retries, yet no error")
            continue
        if not used_up:
            violations.append(f"run {run['run']} failed ({message[:200]}) with no prompt's retries used up")
            continue
        reasons = _reasons_of(message)
        kinds = [e.kind for e in by_prompt[prompts[used_up[0]]] if e.epoch == run["run"]]
        if reasons is None or len(reasons) != max_retries + 1 or align(reasons, kinds) is None:
            violations.append(f"run {run['run']}: its error {message[:200]!r} is not prompt {used_up[0]}'s "
                              f"failures (server: {kinds})")
    failed_runs = sum(run["_error"] is not None for run in runs)
    used_up_total = sum(len(v) for v in exhausted.values())
    if used_up_total < expected["exhausted"]:
        violations.append(f"{used_up_total} prompt(s) used up their retries; the schedule calls for "
                          f"{expected['exhausted']} at least")
    if runs and runs[-1]["_error"] is not None:
        violations.append(f"the last of {len(runs)} stage runs still failed")

    # 4. The stage's own counts.
    before = 0
    for run in runs:
        if run["lvlm_calls"] != run["new_answers"]:
            violations.append(f"run {run['run']}: {run['lvlm_calls']} LVLM calls counted, "
                              f"{run['new_answers']} answers stored")
        if run["cache_hits"] != before:
            violations.append(f"run {run['run']}: {run['cache_hits']} cache hits, {before} answers stored before it")
        before += run["new_answers"]

    retries = sum(len(r["meta"].get("failures", [])) for r in records.values())
    return {
        "violations": violations,
        "expected": expected,
        "server": {"requests": server.requests, "answers": server.counts["ok"], "faults": injected,
                   "restarts": server.restarts, "cut_by_restart": server.counts["restart"],
                   # requests of prompts after an answer the client gave up on (a late answer), by kind
                   "after_a_late_answer": dict(sorted(after_answer.items()))},
        "stage": {"answers_in_cache": len(records), "stage_runs": len(runs), "failed_runs": failed_runs,
                  "prompts_that_used_up_their_retries": used_up_total,
                  # A failed run's error names the first such prompt; the others' failures are in no
                  # record of the stage (only in the server's log).
                  "used_up_prompts_in_no_error": used_up_total - failed_runs,
                  "retries_in_answers": retries, "failures_in_answers": dict(sorted(recorded.items())),
                  "requests_never_received": unseen,
                  "used_up_prompts_with_requests_never_received": short_used_up,
                  # answers (or faults) the server sent after the client's timeout: the client's timeout,
                  # not an injected one (a starved machine); such an answer is paid for twice
                  "late_responses_in_answered_runs": late, "late_answers_in_answered_runs": late_answers,
                  "late_answers_in_failed_runs": late_in_failed_runs,
                  "server_kinds_of_used_up_prompts": dict(sorted(in_failed_runs.items())),
                  "lvlm_calls": sum(r["lvlm_calls"] for r in runs)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000, help="prompts (each answered once)")
    parser.add_argument("--concurrency", type=int, default=32, help="labelling.max_concurrency")
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--max-retries", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=5.0, help="labelling.timeout_s (a slow fault costs this)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the server's time per answer")
    parser.add_argument("--no-restart", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: reports/benchmarks/labelling_soak.json")
    args = parser.parse_args(argv)
    report = soak(args.requests, args.concurrency, args.fault_rate, args.seed, args.max_retries, args.timeout_s,
                  args.latency_ms / 1000, not args.no_restart)
    write_json_atomic(args.out or paths.BENCHMARKS / "labelling_soak.json", report)
    print(json.dumps({k: report[k] for k in ("violations", "expected", "server", "stage", "throughput")}, indent=1))
    return 0 if not report["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
