"""VLM-CaR end to end on the tiny dataset with the scripted annotator (real sandbox, real env)."""

from __future__ import annotations

import numpy as np
import pytest

from rgvlm.envs import NUM_ACTIONS, encode_observation, make_env, reset_quietly
from rgvlm.methods.rg_vlm import RGVLMConfig, label_rg_vlm
from rgvlm.methods.vlm_car import (
    DECOMPOSITION_MISTAKES,
    PROGRAM_MISTAKES,
    DecompositionTruth,
    ProgramTruth,
    VLMCaRConfig,
    config_from_params,
    label_vlm_car,
    misread_decomposition,
    misread_subtask,
    ordered_completion,
    parse_decomposition,
    parse_program,
    progress_curve,
    random_rollout,
    scripted_program,
)
from rgvlm.params import ParamError
from rgvlm.rewards.oracle import oracle_rewards
from rgvlm.sandbox import SandboxLimits
from rgvlm.vlm.cache import CachedClient, ResponseCache
from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise

CLEAN = ScriptedNoise(score_sd=0.0, misattribution=0.0, malformed_rate=0.0)
CONFIG = VLMCaRConfig(tile_size=4)


class Recording(ScriptedAnnotator):
    """The scripted annotator, remembering every request it answered."""

    def __init__(self, noise):
        super().__init__(noise)
        self.requests = []

    def generate(self, requests):
        self.requests.extend(requests)
        return super().generate(requests)


class ProgramsFrom(Recording):
    """Answers first program attempts with ``first(subtask, request)`` and regenerations with
    ``later(subtask, request)``; everything else (and ``later=None``) like the clean annotator."""

    def __init__(self, first, later=None):
        super().__init__(CLEAN)
        self.first, self.later = first, later

    def answer(self, request):
        if isinstance(request.annotation, ProgramTruth):
            regeneration = "Your previous programs" in request.prompt
            answer = self.later if regeneration else self.first
            if answer is not None:
                return answer(request.annotation.subtask, request)
        return super().answer(request)


@pytest.fixture(scope="module")
def clean_run(tiny_dataset, tmp_path_factory):
    cache = tmp_path_factory.mktemp("vlm-car-cache")
    client = CachedClient(Recording(CLEAN), ResponseCache(cache))
    result, stats = label_vlm_car(tiny_dataset, client, CONFIG, needs_images=True)
    return result, stats, client, cache


def test_clean_programs_reproduce_the_oracle_exactly(clean_run, tiny_dataset):
    result, stats, client, _ = clean_run
    np.testing.assert_array_equal(result.rewards, oracle_rewards(tiny_dataset).rewards)
    assert stats["failed_programs"] == 0 and stats["regenerations"] == 0 and stats["sandbox_failures"] == {}
    assert stats["random_rollouts"] == 4 * sum(e["k"] >= 2 for e in tiny_dataset.episodes)  # one mission each
    for episode in tiny_dataset.episodes:
        assert stats["decompositions"][episode["mission"]] == episode["subtasks"]
    for subtask, record in stats["programs"].items():
        assert record["status"] == "accepted" and record["source"] == scripted_program(subtask)
    # Frames of the first and last state go with each decomposition query; program queries are text.
    decompositions = [r for r in client.client.requests if isinstance(r.annotation, DecompositionTruth)]
    assert len(decompositions) == len(tiny_dataset.missions) and all(len(r.images) == 2 for r in decompositions)
    assert all(not r.images for r in client.client.requests if isinstance(r.annotation, ProgramTruth))
    assert result.reward_set == "vlm_car" and result.provenance["lvlm"]["backend"] == "scripted"
    assert result.provenance["config"]["max_random_success"] == 0.10 and "programs" not in result.cost


def test_far_fewer_lvlm_calls_than_rg_vlm_and_a_cached_rerun_asks_nothing(clean_run, tiny_dataset, tmp_path):
    result, stats, client, cache = clean_run
    calls = client.usage.lvlm_calls
    assert calls == stats["decomposition_queries"] + stats["program_queries"] == 18 + stats["subtasks"]
    rg = CachedClient(ScriptedAnnotator(CLEAN), ResponseCache(tmp_path))
    label_rg_vlm(tiny_dataset, rg, rg, RGVLMConfig(), needs_images=False)
    assert calls * 3 < rg.usage.lvlm_calls, (calls, rg.usage.lvlm_calls)
    # The same prompts (cheaper random rollouts change no prompt, and no verdict of correct programs).
    again = CachedClient(Recording(CLEAN), ResponseCache(cache))
    cheaper = VLMCaRConfig(tile_size=CONFIG.tile_size, random_trajectories=1, random_max_steps=16)
    rerun, _ = label_vlm_car(tiny_dataset, again, cheaper, needs_images=True)
    assert again.usage.lvlm_calls == 0 and again.usage.cache_hits == calls
    np.testing.assert_array_equal(rerun.rewards, result.rewards)


def _never_fires(source: str) -> bool:
    """A program of the "never_fires" kind (scripted_program): a door state the API never reports,
    or the placed object tested as carried."""
    return "'opened'" in source or "carrying_is(" in source


def _invisible_to_the_expert_rule(source: str) -> bool:
    """A wrong program that holds, in order, on every expert trajectory too: diagonal cells or a
    distance of 2 counted as "next to", or "the agent is next to the door" for "open"."""
    return "max(abs(" in source or "<= 2" in source or "obs.adjacent(obs.agent" in source


def test_buggy_programs_are_rejected_and_regenerated_with_feedback(tiny_dataset):
    buggy = ScriptedAnnotator(ScriptedNoise(score_sd=0.0, misattribution=1.0, malformed_rate=0.3, seed=4))
    client = ProgramsFrom(lambda subtask, request: buggy.answer(request))
    result, stats = label_vlm_car(tiny_dataset, client, VLMCaRConfig(random_trajectories=2), needs_images=False)
    assert stats["program_reasks"] > 0  # malformed answers were re-asked
    assert stats["program_failures"].get("expert", 0) >= 5 and stats["regenerations"] >= 5
    expert_subtasks = {s for e in tiny_dataset.episodes if e["kind"] == "expert" for s in e["subtasks"]}
    assert len(expert_subtasks) >= 10
    never_fires, caught, slipped = set(), set(), set()
    for subtask, record in stats["programs"].items():
        first = record["attempts"][0]
        assert first["source"] != scripted_program(subtask)  # every first attempt was wrong (or unusable)
        if first["source"] is not None and _never_fires(first["source"]):
            never_fires.add(subtask)
        if first["failure"] is not None:  # the regeneration (drawn clean here) is the correct program
            caught.add(subtask)
            assert record["status"] == "accepted" and record["source"] == scripted_program(subtask)
        elif subtask in expert_subtasks:
            slipped.add(subtask)
    # A program that never fires fails the expert rule wherever the sub-task has an expert
    # trajectory, and is regenerated.
    assert never_fires & expert_subtasks and never_fires & expert_subtasks <= caught
    # What slips past the expert rule is what it cannot see: a check that also holds (in order) on
    # the expert trajectories -- a looser relation, or at most one wrong object that a later
    # sub-task happens to place there.
    assert sum(not _invisible_to_the_expert_rule(stats["programs"][s]["source"]) for s in slipped) <= 1
    assert len(caught) >= len(expert_subtasks) // 2
    regenerations = [r.prompt for r in client.requests if "Your previous programs" in r.prompt]
    assert len(regenerations) == stats["regenerations"] and all("Failure:" in p for p in regenerations)
    # The bugs that survive cost agreement with the oracle, but most transitions still agree.
    oracle = oracle_rewards(tiny_dataset).rewards
    assert 0.9 < np.mean(result.rewards == oracle) < 1.0


def test_program_and_decomposition_mistakes_are_an_lvlms():
    rng = np.random.default_rng(0)
    put, door = "put the red key next to the blue ball", "open the red door"
    wrong = {scripted_program(put, rng) for _ in range(200)} | {scripted_program(door, rng) for _ in range(60)}
    # Every kind is drawn, none is the correct program, and each still parses as one.
    # put: 5 other colours of the target or the moved object, the other target type, 3 relations;
    # open: 5 other door colours, 2 relations.
    assert len(wrong) == (5 + 5 + 1 + 3) + (5 + 2)
    assert all(parse_program(f"```python\n{w}```").value == w for w in wrong)
    assert scripted_program(put) not in wrong and scripted_program(door) not in wrong
    assert {k for k in PROGRAM_MISTAKES} == {"open", "put"}
    # A misread sub-task names another object (never one next to itself), in the suite's grammar.
    same = "put the red key next to the blue key"
    for _ in range(100):
        misread = misread_subtask(same, rng)
        assert misread != same and parse_decomposition(f'["{misread}"]').value == (misread,)
        words = misread.split()
        assert (words[2], words[3]) != (words[7], words[8])
    truth = (door, put, "open the blue door", "put the grey ball next to the green key")
    assert misread_decomposition(truth, rng, 0.0) == list(truth)
    answers = [misread_decomposition(truth, rng, 1.0) for _ in range(200)]
    assert all(a != list(truth) for a in answers)
    assert any(len(a) < len(truth) for a in answers)  # dropped
    assert any(sorted(a) == sorted(truth) for a in answers)  # only swapped
    assert any(len(a) == len(truth) and not set(a) & set(truth) for a in answers)  # every object misread
    assert DECOMPOSITION_MISTAKES == ("wrong_object", "dropped", "swapped_with_next")


class DecompositionsFrom(Recording):
    """Misreads decompositions with ``noise``; answers everything else like the clean annotator."""

    def __init__(self, noise):
        super().__init__(CLEAN)
        self.misreading = ScriptedAnnotator(noise)

    def answer(self, request):
        if isinstance(request.annotation, DecompositionTruth):
            return self.misreading.answer(request)
        return super().answer(request)


def test_misread_decompositions_lose_their_sub_tasks_to_verification(tiny_dataset):
    client = DecompositionsFrom(ScriptedNoise(score_sd=0.0, misattribution=0.5, malformed_rate=0.0, seed=1))
    result, stats = label_vlm_car(tiny_dataset, client, VLMCaRConfig(random_trajectories=2), needs_images=False)
    truth = {e["mission"]: tuple(e["subtasks"]) for e in tiny_dataset.episodes}
    misread = {m for m, d in stats["decompositions"].items() if tuple(d) != truth[m]}
    assert misread and len(misread) < len(truth)
    # A sub-task no mission has: its (correct) program never completes the expert trajectories of
    # the missions it was read for, is regenerated to no avail, and is dropped from each of them
    # (a mission without an expert trajectory cannot judge it, and keeps it).
    invented = {s for m in misread for s in stats["decompositions"][m]} - {s for t in truth.values() for s in t}
    expert_missions = {e["mission"] for e in tiny_dataset.episodes if e["kind"] == "expert"}
    judged = {s for m in misread & expert_missions for s in stats["decompositions"][m]} & invented
    assert judged and stats["regenerations"] >= len(judged) * VLMCaRConfig().max_regenerations
    for s in judged:
        judged_by = {m for m in misread & expert_missions if s in stats["decompositions"][m]}
        listed_by = {m for m, d in stats["decompositions"].items() if s in d}
        assert stats["programs"][s]["dropped_in_missions"] >= len(judged_by)
        assert (stats["programs"][s]["status"] == "failed") == (stats["programs"][s]["dropped_in_missions"] == len(listed_by))
    # A true sub-task's program is not taken from the missions that read it right.
    assert stats["subtask_drops"] > stats["failed_programs"]
    oracle = oracle_rewards(tiny_dataset).rewards
    assert 0.8 < np.mean(result.rewards == oracle) < 1.0


def test_hostile_and_permissive_programs_are_contained_and_regenerated(tiny_dataset):
    order = {}

    def first(subtask, request):
        index = order.setdefault(subtask, len(order))
        body = {0: "    while True:\n        pass\n", 1: "    import os\n    return True\n",
                2: "    return len([0] * 10**10) > 0\n"}.get(index, "    return True\n")
        return f"```python\ndef check(obs):\n{body}```"

    client = ProgramsFrom(first)
    config = VLMCaRConfig(random_trajectories=3, random_max_steps=48,
                          sandbox=SandboxLimits(timeout_s=10.0, cpu_s=1, memory_mb=256))
    result, stats = label_vlm_car(tiny_dataset, client, config, needs_images=False)
    assert stats["sandbox_failures"] == {"timeout": 1, "rejected": 1, "memory": 1}
    assert stats["program_failures"]["random"] >= 5  # `return True` sets complete every random rollout
    survivors = set()
    for subtask, record in stats["programs"].items():
        assert record["status"] == "accepted"
        if record["attempts"][0]["failure"] is not None or order[subtask] < 3:
            assert record["source"] == scripted_program(subtask)
        else:
            survivors.add(subtask)
            assert record["source"].endswith("return True\n")
    # The reference's random rule judges a set by >= 2 completed sub-tasks: it cannot reject `return True`
    # in a one-sub-task mission, nor next to a correct program whose sub-task random actions rarely do.
    single = {s for e in tiny_dataset.episodes if e["k"] == 1 for s in e["subtasks"]}
    assert survivors and len(survivors) <= len(single) + 2
    feedback = " ".join(r.prompt for r in client.requests if "Your previous programs" in r.prompt)
    assert "random-action trajectories" in feedback and "timeout" in feedback and "Import" in feedback
    assert np.isfinite(result.rewards).all()


def test_programs_that_never_pass_are_dropped(tiny_dataset):
    def nothing(subtask, request):
        return "```python\ndef check(obs):\n    return False\n```"

    never = ProgramsFrom(nothing, later=nothing)
    config = VLMCaRConfig(max_regenerations=1, random_trajectories=1, random_max_steps=8)
    result, stats = label_vlm_car(tiny_dataset, never, config, needs_images=False)
    expert_missions = {e["mission"] for e in tiny_dataset.episodes if e["kind"] == "expert"}
    expert_subtasks = {s for e in tiny_dataset.episodes if e["kind"] == "expert" for s in e["subtasks"]}
    dropped = {s for s, r in stats["programs"].items() if r["dropped_in_missions"]}
    assert dropped == expert_subtasks
    # Dropped from exactly the missions with an expert trajectory to judge it; "failed" where that
    # is every mission listing it.
    listed = {s: {m for m, d in stats["decompositions"].items() if s in d} for s in dropped}
    assert all(stats["programs"][s]["dropped_in_missions"] == len(listed[s] & expert_missions) for s in dropped)
    failed = {s for s, r in stats["programs"].items() if r["status"] == "failed"}
    assert failed == {s for s in dropped if listed[s] <= expert_missions} and stats["failed_programs"] == len(failed)
    assert stats["subtask_drops"] == sum(len(listed[s] & expert_missions) for s in dropped)
    assert all(len(stats["programs"][s]["attempts"]) == 2 for s in dropped)
    assert all(stats["programs"][s]["source"] is None for s in failed)
    assert np.all(result.rewards == 0.0)


def test_random_rollouts_record_what_the_plain_environment_does():
    """The rollout's shortcuts (no partial view, no re-matching after drops) change nothing recorded."""
    grids, carries = random_rollout("RGVLM/Ordered-k2-v0", 7, {}, np.random.default_rng(5), max_steps=120)
    env = make_env("RGVLM/Ordered-k2-v0")
    reset_quietly(env, 7)
    rng = np.random.default_rng(5)
    plain = [encode_observation(env)]
    for _ in range(120):
        env.step(int(rng.integers(NUM_ACTIONS)))
        plain.append(encode_observation(env))
    np.testing.assert_array_equal(grids, np.stack([g for g, _ in plain]))
    np.testing.assert_array_equal(carries, np.stack([c for _, c in plain]))


def test_ordered_latched_progress():
    holds = np.array([[0, 1, 0, 0, 0, 0],   # sub-task 0 holds at 1, then is undone (latched)
                      [1, 0, 0, 1, 1, 0],   # sub-task 1 held before its turn: counts only from 3
                      [0, 0, 0, 1, 0, 0]],  # completes in the same step as sub-task 1
                     dtype=bool)
    assert ordered_completion(holds) == [1, 3, 3]
    assert progress_curve(holds).tolist() == [0, 1, 1, 3, 3, 3]
    assert ordered_completion(holds[[2, 0, 1]]) == [3]


def test_parsers_and_scripted_answers():
    assert parse_decomposition('Sure: ["Open the red door.", "put the  green ball next to the blue key"]').value == (
        "open the red door", "put the green ball next to the blue key")
    for bad in ("no list here", "[]", '["a", 3]', '{"subtasks": ["a"]}', "[not json]"):
        assert parse_decomposition(bad).value is None, bad
    source = parse_program("Here:\n```python\ndef check(obs):\n    return True\n```\n").value
    assert source == "def check(obs):\n    return True\n"
    assert parse_program("def check(obs):\n    return False").value is not None  # bare code
    for bad in ("prose only", "```python\ndef check(obs)\n    return 1\n```", "```python\ndef other(o):\n    pass\n```"):
        assert parse_program(bad).value is None, bad
    rng = np.random.default_rng(0)
    malformed = ScriptedNoise(malformed_rate=1.0)
    truth = DecompositionTruth(("open the red door", "put the red key next to the blue ball"))
    assert all(parse_decomposition(truth.scripted_answer(rng, malformed)).value is None for _ in range(20))
    assert parse_decomposition(truth.scripted_answer(rng, CLEAN)).value == truth.subtasks
    program = ProgramTruth("put the red key next to the blue ball")
    assert all(parse_program(program.scripted_answer(rng, malformed)).value is None for _ in range(20))
    assert parse_program(program.scripted_answer(rng, CLEAN)).value == scripted_program(program.subtask)
    wrong = ScriptedNoise(malformed_rate=0.0, misattribution=1.0)
    assert all(parse_program(program.scripted_answer(rng, wrong)).value != scripted_program(program.subtask)
               for _ in range(20))


def test_config_validation_names_the_key():
    assert config_from_params({}) == VLMCaRConfig()
    assert config_from_params({"max_regenerations": 1, "sandbox": {"cpu_s": 3}}).sandbox.cpu_s == 3
    cases = [
        ({"max_random_success": 1.5}, "vlm_car.max_random_success"),
        ({"random_min_subtasks": 0}, "vlm_car.random_min_subtasks"),
        ({"max_regenerations": True}, "vlm_car.max_regenerations"),
        ({"expert_min_succes": 1.0}, "vlm_car.expert_min_succes"),
        ({"sandbox": {"memory_mb": 1}}, "vlm_car.sandbox.memory_mb"),
        ({"sandbox": {"walltime": 3}}, "vlm_car.sandbox.walltime"),
        ({"sandbox": 5}, "vlm_car.sandbox"),
    ]
    for raw, key in cases:
        with pytest.raises(ParamError) as caught:
            config_from_params(raw)
        assert caught.value.key == key, (raw, caught.value.key)
    with pytest.raises(ValueError, match="expert_min_success"):
        VLMCaRConfig(expert_min_success=2.0)
