"""The benchmark suite: registration, seeding, ordered verification, the expert bot."""

from __future__ import annotations

import numpy as np
import pytest
from minigrid.core.constants import OBJECT_TO_IDX
from minigrid.envs.babyai.core.verifier import OpenInstr, PutNextInstr

from rgvlm.envs import (
    MAX_SUBTASKS,
    SUBTASK_SEPARATOR,
    SUITE_ENV_IDS,
    SuiteBot,
    encode_observation,
    env_id_for,
    grid_shape,
    make_env,
    render_frame,
    reset_quietly,
)


def run_bot(env, seed):
    reset_quietly(env, seed)
    bot = SuiteBot(env)
    progress, rewards = [], []
    while True:
        _, reward, terminated, truncated, info = env.step(bot.replan())
        progress.append(info["progress"])
        rewards.append(reward)
        if terminated or truncated:
            return terminated, progress, rewards


def test_suite_is_registered_for_every_k():
    assert len(SUITE_ENV_IDS) == MAX_SUBTASKS
    for k in range(1, MAX_SUBTASKS + 1):
        env = make_env(env_id_for(k))
        reset_quietly(env, 0)
        assert env.unwrapped.num_subtasks == k
        assert len(env.unwrapped.mission.split(SUBTASK_SEPARATOR)) == k
        assert env.unwrapped.max_steps == 64 * (k + 1)


@pytest.mark.parametrize("bad", [0, 7, -1, 2.5])
def test_bad_k_is_rejected(bad):
    with pytest.raises(ValueError, match="num_subtasks|expected"):
        env_id_for(bad) if isinstance(bad, int) else make_env(env_id_for(1), num_subtasks=bad)


def test_unknown_env_id_is_rejected():
    with pytest.raises(ValueError, match="RGVLM/Ordered-k1-v0"):
        make_env("BabyAI-GoToLocal-v0")


def test_same_seed_same_layout_and_mission_other_seed_differs():
    env_a, env_b = make_env(env_id_for(4)), make_env(env_id_for(4))
    reset_quietly(env_a, 11)
    reset_quietly(env_b, 11)
    grid_a, carry_a = encode_observation(env_a)
    grid_b, carry_b = encode_observation(env_b)
    assert env_a.unwrapped.mission == env_b.unwrapped.mission
    np.testing.assert_array_equal(grid_a, grid_b)
    reset_quietly(env_b, 12)
    assert env_b.unwrapped.mission != env_a.unwrapped.mission or not np.array_equal(encode_observation(env_b)[0], grid_a)


def test_observation_is_the_full_grid_with_agent_and_carry():
    env = make_env(env_id_for(2))
    reset_quietly(env, 3)
    grid, carry = encode_observation(env)
    assert grid.shape == (*grid_shape(), 3) and grid.dtype == np.uint8
    x, y = env.unwrapped.agent_pos
    assert grid[y, x, 0] == OBJECT_TO_IDX["agent"] and grid[y, x, 2] == env.unwrapped.agent_dir
    assert tuple(carry) == (OBJECT_TO_IDX["empty"], 0)
    assert (grid[..., 0] == OBJECT_TO_IDX["door"]).sum() == 4
    frame = render_frame(env, tile_size=8)
    assert frame.shape == (grid.shape[0] * 8, grid.shape[1] * 8, 3)


def test_mission_objects_are_unique_and_subtasks_start_undone():
    for seed in range(20):
        env = make_env(env_id_for(6))
        reset_quietly(env, seed)
        u = env.unwrapped
        for leaf in u.instrs.leaves:
            descs = [leaf.desc] if isinstance(leaf, OpenInstr) else [leaf.desc_move, leaf.desc_fixed]
            assert all(len(d.obj_set) == 1 for d in descs)
            assert not u.instrs.leaf_holds(leaf)
        moved = [leaf.desc_move.obj_set[0] for leaf in u.instrs.leaves if isinstance(leaf, PutNextInstr)]
        targets = [leaf.desc_fixed.obj_set[0] for leaf in u.instrs.leaves if isinstance(leaf, PutNextInstr)]
        assert len({id(o) for o in moved}) == len(moved)
        assert not {id(o) for o in moved} & {id(o) for o in targets}


def test_verification_is_ordered():
    """Doing the second sub-task first does not count until the first is done."""
    env = make_env(env_id_for(2), door_subtask_prob=1.0)  # two "open the X door" sub-tasks
    for seed in range(30):
        reset_quietly(env, seed)
        first, second = env.unwrapped.instrs.leaves
        if isinstance(first, OpenInstr) and isinstance(second, OpenInstr):
            break
    u = env.unwrapped
    second.desc.obj_set[0].is_open = True  # the second door opens first
    _, _, terminated, _, info = env.step(0)
    assert info["progress"] == 0 and not terminated
    first.desc.obj_set[0].is_open = True  # now the first: both complete in one step
    _, reward, terminated, _, info = env.step(0)
    assert info["progress"] == 2 and info["completed"] == 2 and terminated and reward == 1.0
    assert u.instrs.progress == 2


def test_progress_is_latched():
    env = make_env(env_id_for(2), door_subtask_prob=1.0)
    reset_quietly(env, 0)
    first = env.unwrapped.instrs.leaves[0]
    first.desc.obj_set[0].is_open = True
    _, _, _, _, info = env.step(0)
    assert info["progress"] == 1
    first.desc.obj_set[0].is_open = False  # undone later: progress stays
    _, _, _, _, info = env.step(0)
    assert info["progress"] == 1


@pytest.mark.parametrize("k", range(1, MAX_SUBTASKS + 1))
def test_bot_solves_every_k(k):
    env = make_env(env_id_for(k))
    for seed in range(10):
        success, progress, rewards = run_bot(env, 1000 + seed)
        assert success and progress[-1] == k
        assert rewards[-1] == 1.0 and sum(rewards) == 1.0
        assert all(b >= a for a, b in zip(progress, progress[1:], strict=False))


def test_fast_encoding_equals_minigrid_encode_and_skipping_the_agent_view_keeps_dynamics():
    """encode_observation's one-pass encoding equals Grid.encode (plus the agent cell), and a
    rollout with agent_view_obs=False visits exactly the same states."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    rng = np.random.default_rng(0)
    actions = rng.integers(0, 6, 120)
    full, lean = make_env(env_id_for(3)), make_env(env_id_for(3))
    lean.unwrapped.agent_view_obs = False
    for env in (full, lean):
        reset_quietly(env, 11)
    assert set(lean.unwrapped.gen_obs()) == {"mission", "direction"}
    assert "image" in full.unwrapped.gen_obs()
    for action in actions:
        u = full.unwrapped
        reference = u.grid.encode()
        x, y = u.agent_pos
        reference[x, y] = (OBJECT_TO_IDX["agent"], COLOR_TO_IDX["red"], u.agent_dir)
        grid, carry = encode_observation(full)
        np.testing.assert_array_equal(grid, reference.transpose(1, 0, 2))
        lean_grid, lean_carry = encode_observation(lean)
        np.testing.assert_array_equal(lean_grid, grid)
        np.testing.assert_array_equal(lean_carry, carry)
        out_full, out_lean = full.step(int(action)), lean.step(int(action))
        assert out_full[1:4] == out_lean[1:4]
        if out_full[2] or out_full[3]:
            break


def _state_view_mask(env) -> np.ndarray:
    bot = SuiteBot(env, state_view=True)
    return bot.vis_mask.copy()


@pytest.mark.parametrize("k", [1, 3])
def test_state_view_bot_solves_missions_from_what_the_state_shows(k):
    """The state-view expert knows the cells it can reach without opening a door (and what
    stops it), recomputed from the state at every step, and still completes every mission."""
    env = make_env(env_id_for(k), room_size=5, steps_per_subtask=48)
    for seed in range(4):
        reset_quietly(env, seed)
        u = env.unwrapped
        mask = _state_view_mask(env)
        x, y = u.agent_pos
        assert mask[x, y] and not mask.all()  # closed doors hide the other rooms at the start
        for i in range(u.grid.width):
            for j in range(u.grid.height):
                cell = u.grid.get(i, j)
                if mask[i, j] and cell is not None and cell.type == "door" and not cell.is_open:
                    # a known closed door: some neighbour of it is known and passable
                    assert any(mask[i + di, j + dj] for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))
                               if 0 <= i + di < u.grid.width and 0 <= j + dj < u.grid.height)
        bot = SuiteBot(env, state_view=True)
        while True:
            expected = _state_view_mask(env)
            action = bot.replan()
            # the mask follows the state, not the bot's memory: a fresh bot's is the same
            assert np.array_equal(bot.vis_mask, expected)
            _, reward, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        assert terminated and reward > 0, f"k={k}, seed={seed}: the state-view bot did not finish"
