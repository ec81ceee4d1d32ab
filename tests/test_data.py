"""The offline dataset: determinism, mixture, replay, storage, parameter checks."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest

from rgvlm.data.collect import check_dataset_params, collect_episode, episode_kinds
from rgvlm.data.replay import replay_dataset_episode
from rgvlm.envs import env_id_for, make_env, reset_quietly
from rgvlm.envs.suite import decoy_subtask
from rgvlm.params import ParamError, dataset_config, env_config

from .conftest import TINY_DATASET, build_dataset


def test_rebuild_is_byte_identical(tmp_path, tiny_dataset):
    a = build_dataset(tmp_path / "a")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    build_dataset(tmp_path / "b")
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert not mismatch and not errors and len(match) == 8
    assert a.num_transitions == tiny_dataset.num_transitions


def test_other_seed_gives_other_data(tmp_path, tiny_dataset):
    other = build_dataset(tmp_path / "c", {**TINY_DATASET, "seed": 1})
    assert [e["seed"] for e in other.episodes] != [e["seed"] for e in tiny_dataset.episodes]


def test_mixture_shares_and_kinds(tiny_dataset):
    kinds = [e["kind"] for e in tiny_dataset.episodes if e["k"] == 2]
    assert sorted(kinds) == ["expert"] * 3 + ["noisy"] * 2 + ["partial"]  # 6 x (.5, .25, .25), largest remainder
    experts = [e for e in tiny_dataset.episodes if e["kind"] == "expert"]
    assert all(e["success"] and e["final_progress"] == e["k"] for e in experts)
    for e in tiny_dataset.episodes:
        if e["kind"] == "partial":
            assert not tiny_dataset.terminals[tiny_dataset.episode_steps(tiny_dataset.episodes.index(e))].any() or e["success"]


def test_decoy_episodes_do_a_wrong_subtask_competently():
    """A decoy episode follows the bot for j < k sub-tasks, then does a wrong version of the
    next one (another door, object or target) and is cut once that wrong effect holds."""
    cfg = dataset_config({**TINY_DATASET, "mixture": {"decoy": 1.0}})
    env_cfg = env_config({"room_size": 5})
    ended_on_decoy = 0
    for k in (1, 3):
        for index in range(6):
            record = collect_episode(env_cfg, cfg, k, index, "decoy")
            again = collect_episode(env_cfg, cfg, k, index, "decoy")
            assert again.actions == record.actions  # deterministic in its arguments
            assert len(record.grids) == len(record.actions) + 1
            # Cut as a time-out: never terminal unless the decoy happened to finish the mission.
            assert not any(record.terminals[:-1])
            final = replay_final_env(env_cfg, record)
            u = final.unwrapped
            if not record.terminals[-1] and len(record.actions) < u.max_steps:
                # Ended by the decoy: its wrong effect holds now, and the mission is not done.
                ended_on_decoy += 1
                assert record.decoy is not None
                assert record.decoy.surface(u) not in record.subtasks
                record.decoy.reset_verifier(u)
                assert u.instrs.leaf_holds(record.decoy)
                assert u.instrs.progress < k
            final.close()
    assert ended_on_decoy >= 8


def test_detour_episodes_do_a_wrong_version_of_each_subtask_before_the_right_one():
    """A detour episode is the bot with a detour before every sub-task: a wrong version of it,
    done competently (its effect holds while the real sub-task is still the current one), then
    the real one; it runs to success or the time limit, so it is longer than the expert's."""
    cfg = dataset_config({**TINY_DATASET, "mixture": {"detour": 1.0}})
    env_cfg = env_config({"room_size": 5})
    detours, reached, successes, extra_steps = 0, 0, 0, 0
    for k in (1, 3):
        for index in range(6):
            record = collect_episode(env_cfg, cfg, k, index, "detour")
            again = collect_episode(env_cfg, cfg, k, index, "detour")
            assert again.actions == record.actions  # deterministic in its arguments
            expert = collect_episode(env_cfg, cfg, k, index, "expert")
            assert expert.seed == record.seed and expert.mission == record.mission  # the same layout
            assert [p for p, _ in record.detours] == sorted({p for p, _ in record.detours})  # one per sub-task
            held = {p: False for p, _ in record.detours}
            env = make_env(record.env_id, **env_cfg.kwargs())
            reset_quietly(env, record.seed)
            u = env.unwrapped
            for _, decoy in record.detours:
                decoy.reset_verifier(u)
            for action in record.actions:
                env.step(action)
                for progress, decoy in record.detours:
                    if u.instrs.progress == progress and u.instrs.leaf_holds(decoy):
                        held[progress] = True
            # A detour reaches its wrong effect while its sub-task is current, unless the bot's path
            # to it happened to do the real sub-task on the way (e.g. through the mission's door).
            assert all(held[p] or u.instrs.progress > p for p in held), held
            detours += len(record.detours)
            reached += sum(held.values())
            if record.terminals[-1]:
                successes += 1
                assert len(record.actions) >= len(expert.actions)
                extra_steps += len(record.actions) - len(expert.actions)
            else:
                assert len(record.actions) == u.max_steps  # only the time limit ends it
            env.close()
    assert detours >= 20 and reached >= 0.8 * detours and successes >= 8
    assert extra_steps >= 10 * successes  # the detours cost steps: a dozen or more a sub-task


def test_a_bot_that_replans_for_ever_is_a_bot_failure():
    """On this layout (default env, k = 6, index 9) BabyAI's bot, carrying an object past a
    blocker during a detour, once replanned for ever; a bounded number of path searches per
    step makes that a bot failure (rebuild, else a random step), so the episode ends."""
    cfg = dataset_config({**TINY_DATASET, "mixture": {"detour": 1.0}})
    env_cfg = env_config({"room_size": 5, "steps_per_subtask": 48})
    record = collect_episode(env_cfg, cfg, 6, 9, "detour")
    assert record.bot_failures > 0 and len(record.actions) == 48 * 7  # ran to the time limit


def test_card_lists_the_decoy_kind_only_where_the_mixture_uses_it(tmp_path, tiny_dataset):
    from rgvlm.data.card import dataset_card

    assert "share_decoy" not in dataset_card(tiny_dataset)["per_k"][0]  # older manifests keep their card
    with_decoys = build_dataset(tmp_path / "d", {**TINY_DATASET, "mixture": {"expert": 0.5, "decoy": 0.5}})
    row = dataset_card(with_decoys)["per_k"][0]
    assert row["share_decoy"] == 0.5 and row["share_noisy"] == 0.0 and row["success_expert"] == 1.0


def test_decoy_subtask_is_another_one_whose_effect_does_not_hold():
    env = make_env(env_id_for(3), room_size=5)
    for seed in range(20):
        reset_quietly(env, seed)
        instrs = env.unwrapped.instrs
        real = instrs.leaves[0]
        decoy = decoy_subtask(env, np.random.default_rng(seed))
        assert decoy is not None and type(decoy) is type(real)
        assert decoy.surface(env) not in env.unwrapped.subtasks
        assert not instrs.leaf_holds(decoy)
    env.close()


def test_decoy_subtask_while_carrying_names_no_carried_object():
    """Mid-episode (a detour's next sub-task), the agent may carry an object: BabyAI cannot
    describe it (it looks for it on the grid), so no decoy names it, and the mission's own
    sub-tasks are not re-described (which would fail and rebind their verifiers)."""
    from rgvlm.envs import SuiteBot

    env = make_env(env_id_for(3), room_size=5)
    checked = 0
    for seed in range(10):
        reset_quietly(env, seed)
        u = env.unwrapped
        bot = SuiteBot(env)
        for _ in range(60):
            if u.carrying is not None:
                break
            env.step(bot.replan())
        if u.carrying is None or u.instrs.progress >= len(u.instrs.leaves):
            continue
        decoy = decoy_subtask(env, np.random.default_rng(seed))
        carried = (u.carrying.type, u.carrying.color)
        if decoy is not None and hasattr(decoy, "desc_move"):
            assert carried not in {(d.type, d.color) for d in (decoy.desc_move, decoy.desc_fixed)}
        checked += 1
    env.close()
    assert checked >= 3


def replay_final_env(env_cfg, record):
    env = make_env(record.env_id, **env_cfg.kwargs())
    reset_quietly(env, record.seed)
    for action in record.actions:
        env.step(action)
    return env


def test_largest_remainder_shares_sum_exactly():
    cfg = dataset_config({**TINY_DATASET, "episodes_per_k": 7, "mixture": {"expert": 0.34, "noisy": 0.33, "partial": 0.33}})
    kinds = episode_kinds(cfg, 1)
    assert len(kinds) == 7 and {kinds.count(k) for k in ("expert", "noisy", "partial")} == {3, 2}


def test_arrays_are_consistent(tiny_dataset):
    d = tiny_dataset
    assert d.obs_grid.shape[0] == d.num_transitions + len(d.episodes)
    assert d.rewards.sum() == sum(e["success"] for e in d.episodes)
    assert np.all(d.rewards[d.terminals] == 1.0) and np.all(d.rewards[~d.terminals] == 0.0)
    assert np.all(d.progress >= d.progress_before) and np.all(d.progress <= np.array([e["k"] for e in d.episodes])[d.episode_of_step])
    last = np.array([e["step_start"] + e["length"] - 1 for e in d.episodes])
    assert list(d.progress[last]) == [e["final_progress"] for e in d.episodes]
    assert d.actions.min() >= 0 and d.actions.max() < 6
    # Sub-tasks completed per step: never negative, and they add up to each episode's final progress.
    assert d.completed_per_step.min() >= 0
    assert [int(d.completed_per_step[d.episode_steps(i)].sum()) for i in range(len(d.episodes))] == \
        [e["final_progress"] for e in d.episodes]


def test_replay_regenerates_observations_rewards_and_progress(tiny_dataset):
    d = tiny_dataset
    for index in range(0, len(d.episodes), 5):
        e = d.episodes[index]
        replayed = replay_dataset_episode(d, index, tile_size=8)
        rows = slice(e["obs_start"], e["obs_start"] + e["length"] + 1)
        np.testing.assert_array_equal(replayed["grid"], d.obs_grid[rows])
        np.testing.assert_array_equal(replayed["carry"], d.obs_carry[rows])
        np.testing.assert_array_equal(replayed["rewards"], d.rewards[d.episode_steps(index)])
        np.testing.assert_array_equal(replayed["progress"], d.progress[d.episode_steps(index)])
        assert replayed["mission"] == e["mission"]
        assert replayed["frames"].shape == (e["length"] + 1, 88, 88, 3)
        again = replay_dataset_episode(d, index, tile_size=8)
        np.testing.assert_array_equal(again["frames"], replayed["frames"])


def test_stale_data_is_detected(tiny_dataset):
    check_dataset_params(tiny_dataset.manifest, env_config({}), dataset_config(TINY_DATASET))
    with pytest.raises(ValueError, match="make data"):
        check_dataset_params(tiny_dataset.manifest, env_config({}), dataset_config({**TINY_DATASET, "episodes_per_k": 7}))


@pytest.mark.parametrize(
    ("change", "key", "expected"),
    [
        ({"ks": [0, 1]}, "dataset.ks[0]", "1..6"),
        ({"ks": [7]}, "dataset.ks[0]", "1..6"),
        ({"episodes_per_k": -3}, "dataset.episodes_per_k", "1.."),
        ({"mixture": {"expert": 0.5, "noisy": 0.2, "partial": 0.2}}, "dataset.mixture", "sum to 1"),
        ({"mixture": {"expert": 0.5, "bogus": 0.5}}, "dataset.mixture.bogus", "expert, noisy, partial"),
        ({"noise_epsilon": 1.5}, "dataset.noise_epsilon", "[0.0, 1.0]"),
        ({"expert_view": "omniscient"}, "dataset.expert_view", "agent, state"),
        ({"wander_steps": [9, 3]}, "dataset.wander_steps[1]", "9.."),
        ({"epsiodes_per_k": 3}, "dataset.epsiodes_per_k", "one of the keys"),
    ],
)
def test_bad_dataset_params_name_key_value_and_allowed(change, key, expected):
    with pytest.raises(ParamError) as error:
        dataset_config({**TINY_DATASET, **change})
    assert error.value.key == key
    assert key in str(error.value) and expected in str(error.value)


def test_bad_env_params_are_rejected():
    with pytest.raises(ParamError, match="env.room_size"):
        env_config({"room_size": 2})
    with pytest.raises(ParamError, match="env.objs_per_room"):
        env_config({"objs_per_room": 9})


def test_collect_cli_fails_before_work_on_bad_params(tmp_path, capsys):
    from rgvlm.data.__main__ import main

    params = tmp_path / "params.yaml"
    params.write_text("dataset:\n  seed: 0\n  ks: [1, 9]\n  episodes_per_k: 2\n  mixture: {expert: 1.0}\n"
                      "  noise_epsilon: 0.1\n  wander_steps: [1, 2]\n")
    with pytest.raises(ParamError, match=r"dataset.ks\[1\]=9"):
        main(["collect", "--params", str(params), "--out", str(tmp_path / "data")])
    assert not (tmp_path / "data").exists()
