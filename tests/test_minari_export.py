"""The Minari export (rgvlm.data.minari_export, ``python -m rgvlm.data export-minari``): every
transition, reward, mission and privileged info comes back equal, ``recover_environment()`` is
the suite's learner view and replays every episode, and d3rlpy trains on it.

Every test writes under a temporary MINARI_DATASETS_PATH, never the user's home."""

from __future__ import annotations

import gymnasium as gym
import minari
import numpy as np
import pytest

from rgvlm.data.__main__ import main as data_main
from rgvlm.data.minari_export import default_dataset_id, export_minari
from rgvlm.data.minari_store import episode_metadata, open_minari
from rgvlm.data.storage import ARRAY_FILES, save_dataset
from rgvlm.envs import LEARNER_ENV_ID, NUM_ACTIONS
from rgvlm.rewards.base import RewardResult, save_rewards

DATASET_ID = "rgvlm/ordered/sparse-v0"


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def data_dir(tiny_dataset, tmp_path):
    """The tiny dataset written to a directory, as data/ is."""
    manifest = {k: v for k, v in tiny_dataset.manifest.items() if k not in ("format_version", "shapes")}
    arrays = {name: getattr(tiny_dataset, name) for name in ARRAY_FILES}
    save_dataset(tmp_path / "data", manifest, tiny_dataset.episodes, arrays)
    return tmp_path / "data"


def test_export_round_trip_is_exact(tiny_dataset, minari_root):
    data = tiny_dataset
    export_minari(data, DATASET_ID)
    loaded = minari.load_dataset(DATASET_ID)
    assert (loaded.total_episodes, loaded.total_steps) == (len(data.episodes), data.num_transitions)
    assert loaded.action_space == gym.spaces.Discrete(NUM_ACTIONS)
    assert isinstance(loaded.observation_space["mission"], gym.spaces.Text)
    assert not loaded.storage.metadata["jpeg_encoding"]
    metas = episode_metadata(loaded)
    for i, (episode, meta) in enumerate(zip(loaded.iterate_episodes(), metas, strict=True)):
        e, steps = data.episodes[i], data.episode_steps(i)
        observed = slice(e["obs_start"], e["obs_start"] + e["length"] + 1)
        np.testing.assert_array_equal(episode.observations["grid"], data.obs_grid[observed])
        np.testing.assert_array_equal(episode.observations["carry"], data.obs_carry[observed])
        assert list(episode.observations["mission"]) == [e["mission"]] * (e["length"] + 1)
        np.testing.assert_array_equal(episode.actions, data.actions[steps])
        assert episode.rewards.dtype == np.float32
        np.testing.assert_array_equal(episode.rewards, data.rewards[steps])
        np.testing.assert_array_equal(episode.terminations, data.terminals[steps])
        assert episode.truncations[:-1].sum() == 0 and bool(episode.truncations[-1]) == (not e["success"])
        np.testing.assert_array_equal(episode.infos["progress"][1:], data.progress[steps])
        assert episode.infos["progress"][0] == 0 and (episode.infos["num_subtasks"] == e["k"]).all()
        assert (meta["seed"], int(meta["options"]["num_subtasks"]), meta["kind"]) == (e["seed"], e["k"], e["kind"])


def test_recover_environment_replays_every_episode(tiny_dataset, minari_root):
    data = tiny_dataset
    loaded = export_minari(data, DATASET_ID)
    env = loaded.recover_environment()
    assert env.spec.id == LEARNER_ENV_ID
    assert {k: env.spec.kwargs[k] for k in data.manifest["env"]} == data.manifest["env"]
    for i, (episode, meta) in enumerate(zip(loaded.iterate_episodes(), episode_metadata(loaded), strict=True)):
        observation, info = env.reset(seed=meta["seed"], options=meta["options"])
        for t, action in enumerate(episode.actions):
            assert observation["mission"] == episode.observations["mission"][t]
            np.testing.assert_array_equal(observation["grid"], episode.observations["grid"][t], err_msg=f"{i}/{t}")
            np.testing.assert_array_equal(observation["carry"], episode.observations["carry"][t])
            observation, reward, terminated, truncated, info = env.step(int(action))
            assert reward == episode.rewards[t] and info["progress"] == episode.infos["progress"][t + 1]
        np.testing.assert_array_equal(observation["grid"], episode.observations["grid"][-1])
        assert terminated == bool(episode.terminations[-1])
        # A partial episode is cut by the collector, not the level: only the others end by themselves.
        if data.episodes[i]["kind"] != "partial":
            assert terminated or truncated
    env.close()


def test_cli_exports_a_reward_set_and_refuses_to_overwrite(data_dir, tiny_dataset, tmp_path, minari_root, capsys):
    rewards_dir = tmp_path / "rewards"
    labels = np.linspace(0, 1, tiny_dataset.num_transitions, dtype=np.float32)
    save_rewards(rewards_dir, RewardResult("oracle", labels))
    argv = ["export-minari", "--data", str(data_dir), "--rewards", "oracle", "--rewards-dir", str(rewards_dir)]
    assert data_main(argv) == 0
    dataset_id = default_dataset_id("oracle")
    assert dataset_id in capsys.readouterr().out
    loaded = open_minari(dataset_id)
    np.testing.assert_array_equal(np.concatenate([e.rewards for e in loaded.iterate_episodes()]),
                                  np.load(rewards_dir / "oracle.npy"))
    assert loaded.storage.metadata["rgvlm_rewards"] == "oracle"
    with pytest.raises(FileExistsError, match="already exists.*--force"):
        data_main(argv)
    assert data_main([*argv, "--force"]) == 0
    with pytest.raises(ValueError, match="dataset id 'no version'"):
        data_main(["export-minari", "--data", str(data_dir), "--id", "no version"])
    save_rewards(rewards_dir, RewardResult("short", labels[:-1]))
    with pytest.raises(SystemExit, match="'short'.*rerun the rewards stage"):
        data_main(["export-minari", "--data", str(data_dir), "--rewards", "short", "--rewards-dir", str(rewards_dir)])
    assert not list(minari_root.glob(".staging-*")), "no staging folder is left behind"


def test_open_minari_names_what_it_tried(minari_root):
    with pytest.raises(FileNotFoundError, match="'nope/none-v0' not found.*holds: nothing"):
        open_minari("nope/none-v0")


def test_d3rlpy_trains_on_the_export(tiny_dataset, minari_root):
    """Minari -> the dataset view -> the project's d3rlpy conversion -> one DiscreteCQL update."""
    pytest.importorskip("d3rlpy")
    from rgvlm.data.minari_import import from_minari
    from rgvlm.peer import to_mdp_dataset
    from rgvlm.peer.d3rlpy_baseline import train_d3rlpy

    loaded = export_minari(tiny_dataset, DATASET_ID)
    view = from_minari(loaded)
    np.testing.assert_array_equal(view.obs_grid, tiny_dataset.obs_grid)
    table = np.zeros((len(view.missions), 6, 384), dtype=np.float32)  # any mission table trains
    mdp = to_mdp_dataset(view, table)
    assert mdp.transition_count == tiny_dataset.num_transitions
    run = train_d3rlpy("cql", mdp, seed=0, n_steps=1, batch_size=8)
    assert run.settings["n_steps"] == 1 and len(run.losses) == 1
    assert all(np.isfinite(value) for value in run.losses[0].values())


@pytest.mark.parametrize("method", ["rg_vlm", "vlm_car"])
def test_relabelling_the_export_gives_the_pipelines_labels(tiny_dataset, minari_root, tmp_path, method):
    """The export read back (rgvlm.data.minari_import) labels exactly as data/ does in label@<method>."""
    from rgvlm import paths
    from rgvlm.data.minari_import import from_minari
    from rgvlm.params import load_profile
    from rgvlm.rewards.label_stage import check_method, label_with

    params = load_profile(paths.ROOT / "profiles" / "tiny.yaml")  # the overlay, merged
    view = from_minari(export_minari(tiny_dataset, DATASET_ID))
    assert view.source["suite"] and view.source["ground_truth"] == "progress info"
    np.testing.assert_array_equal(view.progress, tiny_dataset.progress)
    assert [e["env_id"] for e in view.episodes] == [e["env_id"] for e in tiny_dataset.episodes]
    assert view.max_episode_limit == tiny_dataset.max_episode_limit
    labels = []
    for name, data in (("data", tiny_dataset), ("export", view)):
        setup = check_method(method, params)
        labels.append(label_with(*setup, data, tmp_path / name / "cache", tmp_path / name / "out").rewards)
    np.testing.assert_array_equal(labels[0], labels[1])
