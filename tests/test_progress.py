"""Progress in the terminal (rgvlm.progress): the reporter's arithmetic and rate limit, the places
that report (LVLM queries, IQL training, rollouts), and a real stage run on the tiny profile."""

from __future__ import annotations

import io
import re
import sys

import numpy as np
import pytest
import torch

from rgvlm import progress
from rgvlm.progress import Progress, format_duration


class Clock:
    """An injected clock: time passes only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    for name in (progress.SWITCH, progress.INTERVAL, progress.STAGE):
        monkeypatch.delenv(name, raising=False)


def test_counts_rate_and_eta():
    clock, out = Clock(), Terminal()
    bar = Progress("LVLM answers", 100, "answers", initial=20, stream=out, clock=clock, interval=0, cache_hits=20)
    assert bar.rate is None and bar.eta is None  # nothing done since the start: no rate to guess from
    clock.now += 10
    bar.set(40)
    # 20 answered in 10 s (the 20 from the cache are not in the rate): 2/s, 60 left: 30 s.
    assert bar.rate == pytest.approx(2.0) and bar.eta == pytest.approx(30.0)
    assert out.getvalue() == "LVLM answers: 40/100 answers (40%), cache hits 20, 2 answers/s, ETA 0:30, elapsed 0:10\n"
    clock.now += 5
    bar.update(10, cache_hits=25)
    assert bar.n == 50 and bar.rate == pytest.approx(2.0) and bar.eta == pytest.approx(25.0)
    assert ", cache hits 25, " in out.getvalue().splitlines()[-1]


def test_without_total_and_durations():
    clock, out = Clock(), Terminal()
    bar = Progress("things", None, "things", stream=out, clock=clock, interval=0)
    clock.now += 4
    bar.update(2)
    assert bar.eta is None and out.getvalue() == "things: 2 things, 0.5 things/s, elapsed 0:04\n"
    assert [format_duration(s) for s in (0, 59.6, 65, 3725)] == ["0:00", "1:00", "1:05", "1:02:05"]


def test_plain_lines_are_rate_limited():
    clock, out = Clock(), Terminal()
    with Progress("IQL updates", 1000, "updates", stream=out, clock=clock, interval=30) as bar:
        for _ in range(100):  # 100 updates, one every second
            clock.now += 1
            bar.update()
    lines = out.getvalue().splitlines()
    # A line at 30, 60 and 90 s (none before the first interval), then the final one.
    assert [line.split(": ", 1)[1].split(" ")[0] for line in lines] == ["30/1000", "60/1000", "90/1000", "100/1000"]
    assert "ETA 0:15:10" not in lines[0] and "ETA 16:10" in lines[0]  # 970 left at 1/s
    assert lines[-1] == "IQL updates: 100/1000 updates (10%), 1 updates/s, done in 1:40"


def test_short_work_writes_only_its_final_line():
    clock, out = Clock(), Terminal()
    with Progress("rollouts", 4, "episodes", stream=out, clock=clock, interval=30) as bar:
        for _ in range(4):
            clock.now += 0.5
            bar.update()
    assert out.getvalue() == "rollouts: 4/4 episodes (100%), 2 episodes/s, done in 0:02\n"


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL, "0")
    clock, out = Clock(), Terminal()
    with Progress("x", 3, stream=out, clock=clock) as bar:
        for _ in range(3):
            clock.now += 1
            bar.update()
    assert len(out.getvalue().splitlines()) == 4  # every update, and the final line
    monkeypatch.setenv(progress.INTERVAL, "soon")
    with pytest.raises(ValueError, match="RGVLM_PROGRESS_INTERVAL='soon'"):
        Progress("x", 3, stream=out)


def test_terminal_line_is_redrawn_in_place():
    clock, out = Clock(), Terminal(tty=True)
    with Progress("IQL updates", 10, "updates", stream=out, clock=clock) as bar:
        assert bar.tty and out.getvalue() == "\rIQL updates: 0/10 updates (0%), elapsed 0:00"  # drawn at once
        clock.now += 0.05
        bar.update()  # within TTY_INTERVAL_S of the last draw: not redrawn
        clock.now += 0.2
        bar.update()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")
    # The final line, padded with blanks over the rest of the longer line it redraws.
    assert text.endswith("\rIQL updates: 2/10 updates (20%), 8 updates/s, done in 0:00" + " " * 10 + "\n")
    assert "\rIQL updates: 2/10 updates (20%), 8 updates/s, ETA 0:01, elapsed 0:00" in text


def test_off_switch(monkeypatch):
    monkeypatch.setenv(progress.SWITCH, "0")
    clock, out = Clock(), Terminal(tty=True)
    with Progress("x", 3, stream=out, clock=clock, interval=0) as bar:
        bar.update(3)
    assert out.getvalue() == "" and bar.n == 3


def test_stage_prefix_and_a_failure(monkeypatch):
    monkeypatch.setenv(progress.STAGE, "label@rg_vlm")
    clock, out = Clock(), Terminal()
    with pytest.raises(RuntimeError), Progress("LVLM answers", 8, "answers", stream=out, clock=clock) as bar:
        clock.now += 2
        bar.update(2)
        raise RuntimeError("the server went away")
    assert out.getvalue() == "[label@rg_vlm] LVLM answers: 2/8 answers (25%), 1 answers/s, stopped after 0:02\n"


def test_a_closed_stream_stops_reporting_not_the_work():
    out = Terminal()
    bar = Progress("x", 3, stream=out, interval=0)
    out.close()
    bar.update()
    bar.close()
    assert not bar.on and bar.n == 1


# -- the places that report ---------------------------------------------------------------------
@pytest.fixture
def captured(monkeypatch):
    """Every bar's lines, written at every update, into one string buffer."""
    out = Terminal()
    monkeypatch.setattr(progress, "terminal", lambda: out)
    monkeypatch.setenv(progress.INTERVAL, "0")
    return out


def test_lvlm_queries_report_answers_and_cache_hits(captured, tmp_path):
    from rgvlm.vlm.base import LVLMRequest, LVLMResponse
    from rgvlm.vlm.cache import CachedClient, ResponseCache

    class Echo:
        backend, model = "scripted", "echo"

        def generation_settings(self):
            return {}

        def generate(self, requests):
            return [LVLMResponse(text=r.prompt) for r in requests]

    requests = [LVLMRequest(prompt=f"query {i}") for i in range(5)]
    CachedClient(Echo(), ResponseCache(tmp_path), chunk_size=2).generate(requests[:3])
    first = captured.getvalue().splitlines()
    # Each answer as it is stored, then the final line.
    assert [line.split(": ", 1)[1].split(" ")[0] for line in first] == ["1/3", "2/3", "3/3", "3/3"]
    assert first[-1].startswith("LVLM echo: 3/3 answers (100%), cache hits 0, ")
    captured.truncate(0), captured.seek(0)
    CachedClient(Echo(), ResponseCache(tmp_path), chunk_size=2).generate(requests)  # 3 of the 5 cached
    again = captured.getvalue().splitlines()
    assert [line.split(": ", 1)[1].split(" ")[0] for line in again] == ["4/5", "5/5", "5/5"]
    assert again[-1].startswith("LVLM echo: 5/5 answers (100%), cache hits 3, ") and "done in" in again[-1]
    captured.truncate(0), captured.seek(0)
    CachedClient(Echo(), ResponseCache(tmp_path)).generate([])
    assert captured.getvalue() == ""  # nothing asked, nothing shown


def test_training_reports_updates_per_second_and_eta(captured, tiny_dataset, tmp_path):
    from rgvlm.rl.runs import train_runs
    from rgvlm.rl.training import iql_config_for

    hyper = dict(batch_size=8, hidden_dim=8, num_layers=1, conv_channels=0, egocentric=True, obs_feature_dim=8,
                 mission_feature_dim=8, state_feature_dim=8, slot_dim=8, log_every=2, num_steps=4)
    rewards = {"a": np.zeros(tiny_dataset.num_transitions, dtype=np.float32)}
    table = torch.zeros(len(tiny_dataset.missions), 6, 384)
    train_runs(tiny_dataset, table, rewards, [0, 1], iql_config_for(tiny_dataset, hyper), "cpu", tmp_path)
    lines = captured.getvalue().splitlines()
    assert len(lines) == 5  # every update (interval 0) and the final line
    assert lines[1].startswith("IQL updates, 2 runs in one stack: 2/4 updates (50%), ")
    assert re.search(r"[\d.]+ updates/s, ETA \d+:\d\d, elapsed", lines[1])
    assert lines[-1].startswith("IQL updates, 2 runs in one stack: 4/4 updates (100%), ") and "done in" in lines[-1]


def test_rollouts_report_episodes(captured, tiny_dataset):
    from rgvlm.evaluation import evaluation_episodes, rollout
    from rgvlm.params import EnvConfig

    episodes = evaluation_episodes(tiny_dataset, (1,), ("fresh",), 2, 0)
    finished = []
    # Every run turns left until the time limit: all episodes end at the same step.
    rollout(lambda g, c, m: torch.zeros(g.shape[:2], dtype=torch.long), episodes, EnvConfig(),
            lambda missions: np.zeros((len(missions), 6, 384), dtype=np.float32), num_runs=3,
            on_finished=finished.append)
    assert finished == [6]


# -- a real stage run -----------------------------------------------------------------------------
STAGES = ("label@rg_vlm", "rewards", "train", "peer", "evaluate")


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    """A tiny clone (tests/test_pipeline.py's) trimmed to one labelling method and two trained runs,
    and what ``python -m rgvlm.pipeline STAGE`` wrote to stderr for every stage evaluation needs."""
    from tests.tiny_project import run, tiny_clone, tiny_params

    params = tiny_params()
    params["rewards"]["methods"] = ["sparse", "oracle", "rg_vlm"]
    params["train"].update(reward_sets=["sparse", "rg_vlm"], baselines=[], extra_seeds=[], extra_seeds_for=[])
    dst = tmp_path_factory.mktemp("progress") / "rgvlm"
    env = tiny_clone(dst, params)
    env[progress.INTERVAL] = "0"  # every update: the tiny stages take seconds
    env.pop(progress.SWITCH, None)
    stderr = {stage: run([sys.executable, "-m", "rgvlm.pipeline", stage], dst, env).stderr for stage in STAGES}
    return dst, env, stderr


def _lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


@pytest.mark.slow
def test_stages_show_progress_in_the_terminal_not_in_the_notebook(stage_runs):
    dst, _, stderr = stage_runs
    label = _lines(stderr["label@rg_vlm"], "[label@rg_vlm] LVLM scripted-annotator: ")
    assert label and all(re.search(r": \d+/\d+ answers \(\d+%\)", line) for line in label), stderr["label@rg_vlm"]
    assert all(", cache hits 0, " in line for line in label)  # a cold cache
    assert any("ETA" in line for line in label) and any("done in" in line for line in label)
    train = _lines(stderr["train"], "[train] IQL updates, 2 runs in one stack: ")
    assert len(train) == 41 and "40/40 updates (100%)" in train[-1], stderr["train"]  # every update, the final line
    assert all(re.search(r"[\d.]+ updates/s, ETA \d+:\d\d, elapsed", line) for line in train[:-1])
    peer = stderr["peer"]
    assert "[peer] d3rlpy DiscreteBC seed 0: 20/20 updates (100%)" in peer, peer
    assert "[peer] d3rlpy_cql rollouts (sampled): 6/6 episodes (100%)" in peer
    # 2 runs x 6 episodes x 2 policies, counted as the evaluation workers' chunks end.
    evaluate = _lines(stderr["evaluate"], "[evaluate] evaluation rollouts, 2 runs x 2 policies: ")
    assert evaluate and all(re.search(r": \d+/24 episodes", line) for line in evaluate), stderr["evaluate"]
    assert "24/24 episodes (100%)" in evaluate[-1] and "done in" in evaluate[-1]
    # None of it in the executed notebooks (nor their HTML).
    for name, what in (("02_label_rg_vlm", "LVLM scripted-annotator:"), ("04_train", "IQL updates, 2 runs"),
                       ("04b_peer", "d3rlpy DiscreteBC seed 0:"), ("05_evaluate", "evaluation rollouts, 2 runs")):
        assert what not in (dst / "reports" / "notebooks" / f"{name}.html").read_text(), name
        assert what not in (dst / "outputs" / "notebooks" / f"{name}.ipynb").read_text(), name


@pytest.mark.slow
def test_a_rerun_from_the_cache_shows_the_cache_hits(stage_runs):
    from tests.tiny_project import run

    dst, env, stderr = stage_runs
    first = _lines(stderr["label@rg_vlm"], "[label@rg_vlm] LVLM ")
    again = _lines(run([sys.executable, "-m", "rgvlm.pipeline", "label@rg_vlm"], dst, env).stderr,
                   "[label@rg_vlm] LVLM ")
    # The same queries, every one answered from the cache at once: only each call's final line.
    finals = [line for line in first if "done in" in line]
    assert len(again) == len(finals)
    for line in again:
        total = re.search(r": (\d+)/(\d+) answers \(100%\)", line)
        assert total and total[1] == total[2] and f"(100%), cache hits {total[1]}, " in line, line


@pytest.mark.slow
def test_the_off_switch_in_a_real_stage(stage_runs):
    from tests.tiny_project import run

    dst, env, _ = stage_runs
    result = run([sys.executable, "-m", "rgvlm.pipeline", "label@rg_vlm"], dst, {**env, progress.SWITCH: "0"})
    assert "LVLM " not in result.stderr and "[label@rg_vlm]" not in result.stderr
