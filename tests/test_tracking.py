"""The learner's own progress tracking (rgvlm.envs.tracking) and the remaining-mission view
(``train.mission_view: remaining``): from the dataset through the trainer to the rollouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgvlm.envs.tracking import parse_clause, parse_mission, remaining_mission, track_episode
from rgvlm.rl.iql import IQLConfig, IQLLearner, TransitionBatch
from rgvlm.rl.missions import ClauseTokenEmbedder, RolloutMissions, observation_missions
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL
from tests.test_iql import SMALL, _random_dataset


def test_clauses_parse_from_the_suites_words_and_bad_ones_are_named():
    door = parse_clause("open the red door")
    put = parse_clause("put the blue ball next to the grey key")
    assert door.verb == "open" and put.verb == "put" and put.fixed is not None
    assert len(parse_mission("open the red door, then put the blue ball next to the grey key")) == 2
    with pytest.raises(ValueError, match="'go to the red ball'"):
        parse_clause("go to the red ball")
    with pytest.raises(ValueError, match="'open the pink door'"):
        parse_clause("open the pink door")


def test_the_remaining_mission_drops_done_clauses_and_is_never_empty():
    mission = "open the red door, then open the blue door, then open the green door"
    assert remaining_mission(mission, 0) == mission
    assert remaining_mission(mission, 2) == "open the green door"
    assert remaining_mission(mission, 3) == "open the green door"


def test_tracking_the_datasets_observations_recovers_the_privileged_progress(tiny_dataset):
    """The verifier's rule on the learner's own observations gives the level's progress (read
    here only to check it), lagging it at most where the grid hides an effect; never ahead."""
    data = tiny_dataset
    agree = total = 0
    for episode in data.episodes:
        steps = np.arange(episode["step_start"], episode["step_start"] + episode["length"])
        tracked = track_episode(data.missions[data.mission_of_step[steps[0]]], data.obs_grid[data.obs_index[steps]])
        truth = np.asarray(data.progress_before)[steps]
        assert (tracked <= truth).all(), f"episode {episode}: tracked ahead of the progress"
        agree += int((tracked == truth).sum())
        total += len(steps)
    assert agree / total > 0.98, f"tracked = progress at {agree} of {total} steps"


def test_observation_missions_give_each_state_and_next_state_its_remaining_mission(tiny_dataset):
    data = tiny_dataset
    strings, rows = observation_missions(data, "whole")
    assert rows is None and strings == list(data.missions)
    strings, rows = observation_missions(data, "remaining")
    assert rows.shape == (data.obs_grid.shape[0],) and len(strings) > len(data.missions)
    table = torch.as_tensor(ClauseTokenEmbedder().embed(strings))
    transitions = DeviceTransitions(data, [np.zeros(data.num_transitions, np.float32)], table, "cpu",
                                    observation_missions=rows)
    everything = torch.arange(transitions.num_train)[None]
    batch = transitions.batch(everything, torch.zeros(1, dtype=torch.int64))
    changed = (batch.mission != batch.next_mission).flatten(start_dim=2).any(-1)[0]
    # The mission moves on exactly where a step completed a clause that was not the last one.
    completed = torch.as_tensor(data.completed_per_step > 0) & ~torch.as_tensor(data.terminals.astype(bool))
    assert changed.sum() > 0
    assert (changed == completed[transitions.train_index]).float().mean() > 0.98
    with pytest.raises(ValueError, match="observation_missions"):
        DeviceTransitions(data, [np.zeros(data.num_transitions, np.float32)], table, "cpu",
                          observation_missions=rows[:-1])


def test_the_stack_reads_the_next_states_own_mission_like_the_eager_learner():
    """With ``next_mission`` the stack still equals eager learners fed the same batches, and the
    field is used: the same batches without it give other updates."""
    config = IQLConfig(**SMALL, batch_size=16)
    data = _random_dataset(64)
    data["next_mission"] = data["mission"].roll(3, dims=0)
    seeds = [0, 1]
    stack, without = MultiRunIQL(config, seeds), MultiRunIQL(config, seeds)
    eager = [IQLLearner(config, seed=s) for s in seeds]
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        idx = torch.randint(64, (len(seeds), config.batch_size), generator=g)
        metrics = stack.update(TransitionBatch(**{k: v[idx] for k, v in data.items()}))
        without.update(TransitionBatch(**{k: v[idx] for k, v in data.items() if k != "next_mission"}))
        for r, learner in enumerate(eager):
            reference = learner.update(TransitionBatch(**{k: v[idx[r]] for k, v in data.items()}))
            torch.testing.assert_close(metrics["critic_loss"][r], reference["critic_loss"], rtol=1e-4, atol=1e-5)
    differs = [not torch.allclose(a, b) for a, b in zip(stack.critic.values(), without.critic.values(), strict=True)]
    assert any(differs)


def test_rollout_missions_move_on_when_the_observation_shows_a_clause_done():
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

    mission = "open the red door, then open the blue door"
    embed = ClauseTokenEmbedder().embed
    read = RolloutMissions([mission, mission], embed, "remaining", num_runs=2)
    whole = RolloutMissions([mission, mission], embed, "whole", num_runs=2)
    grid = np.zeros((5, 5, 3), dtype=np.uint8)
    grid[1, 1] = (OBJECT_TO_IDX["door"], COLOR_TO_IDX["red"], STATE_TO_IDX["closed"])
    read.observe(0, 1, grid)
    assert (read.done == 0).all()
    grid[1, 1, 2] = STATE_TO_IDX["open"]
    read.observe(0, 1, grid)  # run 0's episode 1 sees the red door open; the others do not
    assert read.done.tolist() == [[0, 1], [0, 0]]
    vectors = read.vectors(np.array([[0, 1], [0, 1]]))
    rest = torch.as_tensor(embed(["open the blue door"]))[0]
    assert torch.equal(vectors[0, 1], rest) and torch.equal(vectors[1, 1], torch.as_tensor(embed([mission]))[0])
    assert torch.equal(whole.vectors(np.array([[0, 1], [0, 1]]))[0, 1], torch.as_tensor(embed([mission]))[0])


def test_subtask_outcomes_and_the_replayed_diagnosis_agree_on_what_was_reached_and_done():
    """Success per sub-task kind and position, from the records alone and from replaying their
    actions (the bot's actions on two missions: every sub-task reached and completed; an idle
    policy: the first reached, none completed, a stall that never started)."""
    from rgvlm.envs import env_id_for, make_env, reset_quietly
    from rgvlm.envs.bot import SuiteBot
    from rgvlm.evaluation.chaining import chaining_tables, diagnose, subtask_outcomes
    from rgvlm.params import EnvConfig

    env_config = EnvConfig(room_size=5, objs_per_room=2, steps_per_subtask=48)
    records = []
    for seed in (0, 1):
        env = make_env(env_id_for(3), **env_config.kwargs())
        reset_quietly(env, seed)
        bot, actions = SuiteBot(env), []
        while True:
            actions.append(int(bot.replan()))
            _, _, terminated, truncated, _ = env.step(actions[-1])
            if terminated or truncated:
                break
        mission = env.unwrapped.mission
        records.append({"k": 3, "seed": seed, "mission": mission, "progress": 3, "actions": actions, "who": "bot"})
        records.append({"k": 3, "seed": seed, "mission": mission, "progress": 0, "actions": [0] * 20, "who": "idle"})
    plain = subtask_outcomes(records, keys=("who",))
    replayed = diagnose(records, env_config, keys=("who",))
    assert plain[["who", "position", "kind", "reached", "completed"]].equals(
        replayed[["who", "position", "kind", "reached", "completed"]])
    tables = chaining_tables(replayed, ["who"])
    by_position = tables["by_position"].set_index(["who", "position"])["success_when_reached"]
    assert by_position["bot"].tolist() == [1.0, 1.0, 1.0] and by_position["idle"].tolist() == [0.0]
    stalls = tables["stalls"].set_index("who")
    assert set(stalls.index) == {"idle"} and not stalls["started"].any() and not stalls["undid"].any()


def test_both_rollout_engines_track_the_remaining_mission_alike():
    """A policy whose actions depend on the mission it reads: the MiniGrid and array engines give
    the same records with ``mission_view: remaining``."""
    from rgvlm.evaluation import EvalEpisode, rollout
    from rgvlm.params import EnvConfig

    def act(grid, carry, mission):
        code = (mission.flatten(start_dim=2) * torch.arange(mission[0, 0].numel())).sum(-1)
        return ((code + grid.flatten(start_dim=2).sum(-1)).long() % 6)

    env_config = EnvConfig(room_size=5, objs_per_room=2, steps_per_subtask=16)
    episodes = [EvalEpisode(k, "fresh", 1000 + i) for k in (2, 3) for i in range(3)]
    embed = ClauseTokenEmbedder().embed
    out = {engine: rollout(act, episodes, env_config, embed, num_runs=2, engine=engine, mission_view="remaining",
                           record_actions=True) for engine in ("minigrid", "arrays")}
    assert out["minigrid"] == out["arrays"]
