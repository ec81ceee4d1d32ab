"""VLM-CaR end to end on the tiny dataset with the scripted annotator (real sandbox, real env)."""

from __future__ import annotations

import numpy as np
import pytest

from rgvlm.envs import NUM_ACTIONS, encode_observation, make_env, reset_quietly
from rgvlm.methods.rg_vlm import RGVLMConfig, label_rg_vlm
from rgvlm.methods.vlm_car import (
    DecompositionTruth,
    ProgramTruth,
    VLMCaRConfig,
    config_from_params,
    label_vlm_car,
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


def test_buggy_programs_are_rejected_and_regenerated_with_feedback(tiny_dataset):
    buggy = ScriptedAnnotator(ScriptedNoise(score_sd=0.0, misattribution=1.0, malformed_rate=0.3, seed=4))
    client = ProgramsFrom(lambda subtask, request: buggy.answer(request))
    result, stats = label_vlm_car(tiny_dataset, client, VLMCaRConfig(random_trajectories=2), needs_images=False)
    assert stats["program_reasks"] > 0  # malformed answers were re-asked
    assert stats["program_failures"].get("expert", 0) >= 5 and stats["regenerations"] >= 5
    expert_subtasks = {s for e in tiny_dataset.episodes if e["kind"] == "expert" for s in e["subtasks"]}
    caught = set()
    for subtask, record in stats["programs"].items():
        first = record["attempts"][0]
        assert first["source"] != scripted_program(subtask)  # every first attempt was wrong (or unusable)
        if first["failure"] is not None:  # the regeneration (drawn clean here) is the correct program
            caught.add(subtask)
            assert record["status"] == "accepted" and record["source"] == scripted_program(subtask)
    # The expert rule catches nearly every bug of a sub-task with an expert trajectory. It cannot catch
    # a bug whose wrong check still comes true in order on the expert trajectory (here: "put the purple
    # key next to the grey ball" checked as the red key, which a later sub-task puts there).
    assert len(expert_subtasks - caught) <= 1 and len(expert_subtasks) >= 10
    regenerations = [r.prompt for r in client.requests if "Your previous programs" in r.prompt]
    assert len(regenerations) == stats["regenerations"] and all("Failure:" in p for p in regenerations)
    # Bugs in sub-tasks without an expert trajectory may survive: high agreement, not exact.
    oracle = oracle_rewards(tiny_dataset).rewards
    assert np.mean(result.rewards == oracle) > 0.98


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
    expert_subtasks = {s for e in tiny_dataset.episodes if e["kind"] == "expert" for s in e["subtasks"]}
    failed = {s for s, r in stats["programs"].items() if r["status"] == "failed"}
    assert failed == expert_subtasks and stats["failed_programs"] == len(failed)
    assert all(len(stats["programs"][s]["attempts"]) == 2 and stats["programs"][s]["source"] is None for s in failed)
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
