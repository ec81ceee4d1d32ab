"""The d3rlpy peer baseline (rgvlm.peer.d3rlpy_baseline): the conversion keeps every transition,
training runs and is reproducible, and the act callable drives a real rollout.

Skipped when d3rlpy is not installed (it is an optional peer, installed with --no-deps)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from rgvlm.envs import NUM_ACTIONS
from rgvlm.envs.seeds import validation_seed
from rgvlm.evaluation import EvalEpisode, rollout
from rgvlm.params import EnvConfig
from rgvlm.peer import INSTALL_COMMANDS, Conversion, D3rlpyPolicies, install_command, require_d3rlpy, to_mdp_dataset
from rgvlm.peer.d3rlpy_baseline import action_scores, train_d3rlpy


def test_install_command_names_the_no_deps_install():
    assert "--no-deps d3rlpy==2.8.1" in INSTALL_COMMANDS[0]
    assert "gym==0.26.2" in INSTALL_COMMANDS[0]
    assert install_command().count("--no-deps") == len(INSTALL_COMMANDS)


def test_missing_d3rlpy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "d3rlpy", None)  # makes `import d3rlpy` fail
    with pytest.raises(ImportError, match="--no-deps d3rlpy==2.8.1"):
        require_d3rlpy()


@pytest.fixture(scope="module")
def d3rlpy():
    return pytest.importorskip("d3rlpy")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two torch threads on a busy 2-core machine are many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def embedder():
    from rgvlm.rl.missions import MissionEmbedder

    return MissionEmbedder(device="cpu")


@pytest.fixture(scope="module")
def table(tiny_dataset, embedder):
    return embedder.embed(tiny_dataset.missions)


@pytest.fixture(scope="module")
def converted(d3rlpy, tiny_dataset, table):
    conversion = Conversion.for_dataset(tiny_dataset, table)
    return conversion, to_mdp_dataset(tiny_dataset, table, conversion=conversion)


def test_conversion_keeps_every_transition(tiny_dataset, table, converted):
    data = tiny_dataset
    conversion, dataset = converted
    assert conversion.state_dim == 1592 and conversion.mission_dim == 6 * 384
    assert dataset.transition_count == data.num_transitions
    assert len(dataset.episodes) == len(data.episodes)
    mission_of = {m: i for i, m in enumerate(data.missions)}
    features = conversion(data.obs_grid, data.obs_carry, table[[mission_of[e["mission"]] for e in data.episodes]][
        np.repeat(np.arange(len(data.episodes)), [e["length"] + 1 for e in data.episodes])])
    assert features.shape == (len(data.obs_grid), conversion.observation_dim)
    assert {bool(e["success"]) for e in data.episodes} == {True, False}  # both kinds of ending are covered
    picked = 0
    for i, (source, episode) in enumerate(zip(data.episodes, dataset.episodes, strict=True)):
        steps, length, success = data.episode_steps(i), source["length"], bool(source["success"])
        assert episode.terminated == success
        assert episode.transition_count == length  # episode boundaries: one d3rlpy episode per dataset episode
        assert episode.size() == (length if success else length + 1)
        np.testing.assert_array_equal(episode.actions[:length, 0], data.actions[steps])
        np.testing.assert_array_equal(episode.rewards[:length, 0], data.rewards[steps])
        if not success:  # the padding step that carries the final observation
            assert episode.actions[-1, 0] == 0 and episode.rewards[-1, 0] == 0
        for t in range(length):
            transition = dataset.transition_picker(episode, t)
            step = source["step_start"] + t
            np.testing.assert_array_equal(transition.observation, features[data.obs_index[step]])
            assert int(transition.action[0]) == int(data.actions[step])
            assert float(transition.reward[0]) == float(data.rewards[step])
            assert bool(transition.terminal) == bool(data.terminals[step])
            expected_next = 0 * features[0] if data.terminals[step] else features[data.next_obs_index[step]]
            np.testing.assert_array_equal(transition.next_observation, expected_next)
            picked += 1
    assert picked == data.num_transitions


def test_conversion_options(tiny_dataset, table, converted):
    data = tiny_dataset
    conversion, _ = converted
    rewards = np.linspace(0, 1, data.num_transitions, dtype=np.float32)
    lengths = [e["length"] for e in data.episodes]
    holdout = np.repeat(np.arange(len(data.episodes)) < 3, lengths)
    dataset = to_mdp_dataset(data, table, rewards=rewards, holdout=holdout, conversion=conversion)
    assert len(dataset.episodes) == len(data.episodes) - 3
    assert dataset.transition_count == data.num_transitions - sum(lengths[:3])
    first = data.episode_steps(3)
    np.testing.assert_array_equal(dataset.episodes[0].rewards[: lengths[3], 0], rewards[first])
    split = holdout.copy()
    split[first.start] = True  # half an episode
    with pytest.raises(ValueError, match="whole episodes"):
        to_mdp_dataset(data, table, holdout=split, conversion=conversion)
    with pytest.raises(ValueError, match="rewards"):
        to_mdp_dataset(data, table, rewards=rewards[:-1], conversion=conversion)

    small = Conversion.for_dataset(data, table, mission_dim=8, dtype="float16")
    projected = small.mission_features(table)
    assert small.observation_dim == 1592 + 6 * 8 and projected.dtype == np.float16
    empty = np.abs(table).sum(axis=2) == 0  # unused slots stay zero
    assert empty.any() and np.all(projected.reshape(len(table), 6, 8)[empty] == 0)
    assert to_mdp_dataset(data, table, conversion=small).episodes[0].observations.dtype == np.float16


def _train(dataset, algo, seed, steps=4):
    return train_d3rlpy(algo, dataset, seed, steps, batch_size=16, hidden_units=(32, 32), log_every=2)


def test_training_runs_and_is_reproducible(converted):
    conversion, dataset = converted
    x = dataset.episodes[0].observations[:8]
    for algo in ("bc", "cql"):
        run = _train(dataset, algo, seed=0)
        assert [loss["step"] for loss in run.losses] == [2, 4]
        assert all(np.isfinite(loss["loss"]) for loss in run.losses)
        assert run.settings["n_steps"] == 4 and run.settings["hidden_units"] == [32, 32]
        assert run.settings["observation_dim"] == conversion.observation_dim and run.updates_per_second > 0
        if algo == "cql":
            assert run.settings["target_update_interval"] == 200 and run.settings["alpha"] == 1.0
        scores = action_scores(run.algo, x)
        assert scores.shape == (8, NUM_ACTIONS)
        np.testing.assert_array_equal(scores.argmax(dim=1).numpy(), run.algo.predict(x))
        again = _train(dataset, algo, seed=0)
        torch.testing.assert_close(action_scores(again.algo, x), scores, rtol=0, atol=0)
        other = _train(dataset, algo, seed=1)
        assert not torch.equal(action_scores(other.algo, x), scores)


def test_policies_drive_a_real_rollout(tiny_dataset, converted, embedder):
    conversion, dataset = converted
    algos = [_train(dataset, "bc", seed=0), _train(dataset, "cql", seed=0)]  # R = 2 runs, one of each
    episodes = [EvalEpisode(1, "validation", validation_seed(0, i)) for i in range(2)]
    env_config = EnvConfig(**{**tiny_dataset.manifest["env"], "steps_per_subtask": 16})
    for temperature in (0.0, 1.0):
        calls = []
        inner = D3rlpyPolicies(algos, conversion, temperature=temperature, seed=3)

        def act(grid, carry, mission, inner=inner, calls=calls, greedy=temperature == 0.0):
            actions = inner(grid, carry, mission)
            assert actions.shape == grid.shape[:2] and actions.shape[0] == 2 and actions.dtype == torch.long
            assert ((actions >= 0) & (actions < NUM_ACTIONS)).all()
            if greedy:  # greedy = each run's own d3rlpy predict
                x = conversion(grid[1].reshape(-1, *grid.shape[2:]), carry[1], mission[1])
                np.testing.assert_array_equal(actions[1].numpy(), algos[1].algo.predict(x))
            calls.append(actions.shape)
            return actions

        records = rollout(act, episodes, env_config, embedder.embed, num_runs=2)
        assert len(records) == 2 and all(len(r) == 2 for r in records)
        assert calls and calls[0] == (2, 2)
        assert all(0 < rec["steps"] <= 32 for run in records for rec in run)
        if temperature > 0:  # sampling is seeded
            again = rollout(D3rlpyPolicies(algos, conversion, temperature=temperature, seed=3), episodes, env_config,
                            embedder.embed, num_runs=2)
            assert again == records
    with pytest.raises(ValueError, match="2 runs"):
        D3rlpyPolicies(algos[:1], conversion)(*(t[None].expand(2, *t.shape) for t in (
            torch.zeros(1, 11, 11, 3, dtype=torch.uint8), torch.zeros(1, 2, dtype=torch.uint8),
            torch.zeros(1, 6, 384))))
