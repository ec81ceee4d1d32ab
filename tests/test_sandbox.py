"""The sandbox of generated programs, against real hostile programs (no mocks).

Each hostile program must be stopped and reported as a failed program of the right kind,
the caller must carry on, and nothing outside the sandbox may change.
"""

from __future__ import annotations

import numpy as np
import pytest
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

from rgvlm.envs import encode_observation, make_env, reset_quietly
from rgvlm.rewards import observation_api as api
from rgvlm.sandbox import SandboxLimits, check_source, run_checks

FAST = SandboxLimits(timeout_s=10.0, cpu_s=1, memory_mb=256)
DOOR_OPEN = ((("door", "red", 5, 0, "open"), ("ball", "blue", 3, 3, None), ("key", "green", 3, 4, None)),
             (1, 1, 0), None, (11, 11))
DOOR_SHUT = ((("door", "red", 5, 0, "closed"), ("ball", "blue", 3, 3, None)), (1, 1, 0), ("key", "green"), (11, 11))
BATCH = [DOOR_OPEN, DOOR_SHUT, DOOR_OPEN]
GOOD = ("def check(obs):\n"
        "    return obs.is_open('red') and obs.adjacent(obs.find('key', 'green'), obs.find('ball', 'blue'))\n")


def program(body: str) -> str:
    return "def check(obs):\n" + "".join(f"    {line}\n" for line in body.splitlines())


def test_a_correct_program_evaluates_a_batch_in_one_process():
    result = run_checks(GOOD, "check", BATCH, FAST)
    assert result.ok and result.values == [True, False, True]
    many = run_checks(GOOD, "check", BATCH * 2000, FAST)  # 6000 observations, still one process
    assert many.ok and sum(many.values) == 4000
    # Observation objects are accepted too, and the helpers behave as documented.
    obs = api.Observation.from_data(DOOR_SHUT)
    assert obs.to_data() == DOOR_SHUT and obs.find("key", "green") is None and obs.carrying_is("key", "green")
    assert obs.adjacent((1, 1), (1, 2)) and not obs.adjacent((1, 1), (2, 2)) and not obs.adjacent(None, (1, 1))
    assert run_checks("def check(obs):\n    return obs.carrying_is('key', 'green')\n", "check", [obs], FAST).values == [True]


@pytest.mark.parametrize(("source", "reason"), [
    ("import os\ndef check(obs):\n    return True\n", "Import"),
    (program("from os import system\nreturn True"), "ImportFrom"),
    (program("return open('/etc/passwd').read() == ''"), "'open'"),
    (program("return __import__('os') is None"), "'__import__'"),
    (program("return len(().__class__.__bases__[0].__subclasses__()) > 0"), "attribute '__"),
    (program("return check.__globals__ is None"), "'__globals__'"),
    (program("g = (x for x in ())\nreturn g.gi_frame.f_back is None"), "'f_back'"),
    (program("return '{0.__class__}'.format(obs) == ''"), "'format'"),
    (program("global seen\nreturn True"), "Global"),
    (program("return eval('1') == 1"), "'eval'"),
    (program("return getattr(obs, 'agent') is None"), "'getattr'"),
    (program("return type(obs) is None"), "'type'"),
    (program("print('hello')\nreturn True"), "'print'"),
    ("def check(obs:\n    return True\n", "syntax error"),
    ("def other(obs):\n    return True\n", "no top-level function check"),
])
def test_forbidden_programs_are_rejected_before_any_process_starts(source, reason):
    result = run_checks(source, "check", BATCH, FAST)
    assert not result.ok and result.error_kind == "rejected" and reason in result.message
    assert result.wall_s < 1.0
    assert check_source(source) is not None


def test_endless_loops_hit_the_cpu_limit_or_the_wall_clock():
    looping = program("while True:\n    pass")
    result = run_checks(looping, "check", BATCH, FAST)
    assert not result.ok and result.error_kind == "timeout" and "CPU" in result.message
    wall = run_checks(looping, "check", BATCH, SandboxLimits(timeout_s=1.0, cpu_s=30, memory_mb=256))
    assert not wall.ok and wall.error_kind == "timeout" and "wall-clock" in wall.message and wall.wall_s < 5


@pytest.mark.parametrize("body", [
    "return [0] * 10**10",
    "return 'x' * 10**10",
    "blocks = []\nwhile True:\n    blocks.append([0] * 10**6)",  # grows until the address-space limit
])
def test_huge_allocations_hit_the_memory_limit(body):
    result = run_checks(program(body), "check", BATCH, FAST)
    assert not result.ok and result.error_kind == "memory", result


def test_floods_and_non_boolean_results_are_bad_output():
    huge = run_checks(program("return 'x' * 10**6"), "check", BATCH, FAST)
    assert not huge.ok and huge.error_kind == "bad_output" and "str" in huge.message
    number = run_checks(program("return 1"), "check", BATCH, FAST)
    assert not number.ok and number.error_kind == "bad_output"
    # A result larger than the output cap cannot be written (RLIMIT_FSIZE): it fills neither memory nor disk.
    capped = SandboxLimits(timeout_s=10.0, cpu_s=2, memory_mb=256, max_output_bytes=1024)
    flood = run_checks(program("return True"), "check", BATCH * 1000, capped)
    assert not flood.ok and flood.error_kind == "bad_output" and "exceeds" in flood.message
    # None counts as False (a program like `return key and obs.adjacent(key, ball)`).
    assert run_checks(program("return None"), "check", BATCH, FAST).values == [False] * 3


def test_exceptions_and_crashes_are_recorded():
    raised = run_checks(program("return obs.find('ball', 'blue')['x'] > 0 and 1 / 0 > 0"), "check", BATCH, FAST)
    assert not raised.ok and raised.error_kind == "exception" and "ZeroDivisionError" in raised.message
    deep = run_checks("def check(obs):\n    return check(obs)\n", "check", BATCH, FAST)
    assert not deep.ok and deep.error_kind == "exception" and "RecursionError" in deep.message
    broken = run_checks(GOOD, "check", BATCH, FAST, wrap=(api.__file__ + ".missing", "Observation"))
    assert not broken.ok and broken.error_kind == "crash"


def test_the_runtime_layers_hold_without_the_static_check(tmp_path):
    """Even when layer 1 is skipped, the builtins allow-list, RLIMIT_NOFILE = 0 and the dropped
    privileges stop writes: no file appears, and the caller carries on."""
    target = tmp_path / "pwned"
    direct = run_checks(program(f"open({str(target)!r}, 'w').write('x')\nreturn True"), "check", BATCH, FAST,
                        static_check=False)
    assert not direct.ok and direct.error_kind == "exception" and "NameError" in direct.message
    walk = ("classes = [c for c in ().__class__.__bases__[0].__subclasses__() if c.__name__ == '_wrap_close']\n"
            "g = classes[0].__init__.__globals__\n")
    via_os = run_checks(program(walk + f"g['open']({str(target)!r}, g['O_WRONLY'] | g['O_CREAT'])\nreturn True"),
                        "check", BATCH, FAST, static_check=False)
    assert not via_os.ok and via_os.error_kind == "exception" and "Too many open files" in via_os.message
    shell = run_checks(program(walk + f"return g['system']('touch {target}') == 0"), "check", BATCH, FAST,
                       static_check=False)
    assert shell.ok is False or shell.values == [False] * 3  # the shell cannot even load its libraries
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert run_checks(GOOD, "check", BATCH, FAST).values == [True, False, True]  # the caller carries on


def test_limits_are_validated():
    with pytest.raises(ValueError, match="cpu_s"):
        SandboxLimits(cpu_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=8)


def test_the_api_reads_the_suite_observation_encoding():
    """Colour/type indices match MiniGrid's, and a door under the agent is still listed (open)."""
    assert [COLOR_TO_IDX[c] for c in api.COLOUR_NAMES] == list(range(len(api.COLOUR_NAMES)))
    assert all(OBJECT_TO_IDX[name] == idx for idx, name in api.OBJECT_TYPES.items())
    assert [STATE_TO_IDX[s] for s in api.DOOR_STATES] == [0, 1, 2]
    env = make_env("RGVLM/Ordered-k1-v0")
    reset_quietly(env, 3)
    grid, carry = encode_observation(env)
    data = api.observation_data(grid, carry)
    obs = api.Observation.from_data(data)
    assert len(obs.find_all("door")) == 4 and obs.carrying is None
    assert (obs.agent["x"], obs.agent["y"]) == tuple(int(v) for v in env.unwrapped.agent_pos)
    for o in obs.objects:
        assert grid[o["y"], o["x"], 0] == OBJECT_TO_IDX[o["type"]]
    door = obs.door(obs.find_all("door")[0]["colour"])
    standing = grid.copy()
    standing[door["y"], door["x"]] = (OBJECT_TO_IDX["agent"], 0, 0)
    hidden = api.trajectory_data(np.stack([grid, standing]), np.stack([carry, carry]))[1]
    assert api.Observation.from_data(hidden).is_open(door["colour"])
    env.close()
