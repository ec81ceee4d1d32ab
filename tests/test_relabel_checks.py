"""`python -m rgvlm.relabel` checks everything before the first LVLM query (issue 27, item 2).

Datasets collected with Minari's own DataCollector from three MiniGrid/BabyAI environments with
different wrappers, each relabelled end to end or refused before labelling:

- DoorKey in ``RGBImgObsWrapper`` + ``ImgObsWrapper`` (image observations; neither wrapper can be
  recreated by gymnasium): relabelled from its image observations, written without the spec (the
  summary and the metadata say so); asking for replay is refused before labelling, saying how to fix it;
- BabyAI GoToObj with symbolic observations (Dict with its mission): relabelled by replaying each episode;
- Empty in ``FullyObsWrapper`` + ``ImgObsWrapper`` (a symbolic full grid, too small to show, behind
  wrappers that cannot be recreated): refused before labelling.

Then malformed datasets (non-finite rewards, empty and disagreeing episodes, a truncated HDF5 file,
observations too small to render, missing missions with no --mission) fail before any query, naming
the episode and the field: the response cache directory is never made.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
from minari import DataCollector
from minari.data_collector import EpisodeBuffer
from minigrid.utils.baby_ai_bot import BabyAIBot
from minigrid.wrappers import FullyObsWrapper, ImgObsWrapper, RGBImgObsWrapper

from rgvlm.data.minari_store import open_minari
from rgvlm.envs import reset_quietly
from rgvlm.envs.learner import MISSION_CHARSET
from rgvlm.relabel import main as relabel_main
from rgvlm.relabel import relabel

PARAMS = {
    "labelling": {"backend": "scripted", "scripted": {"score_sd": 0.5, "misattribution": 0.0, "malformed_rate": 0.0}},
    "rg_vlm": {"window_length": 4, "window_stride": 4, "frame_stride": 2},
}
GOAL = "get to the green goal square"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def collect(env, dataset_id: str, episodes: int, steps: int, policy=None, seed0: int = 0):
    """``episodes`` episodes of at most ``steps`` steps through Minari's DataCollector."""
    collector = DataCollector(env) if not isinstance(env, DataCollector) else env
    rng = np.random.default_rng(seed0)
    for index in range(episodes):
        reset_quietly(collector, seed0 + index)
        bot = policy(collector) if policy is not None else None
        for _ in range(steps):
            action = int(bot.replan()) if bot is not None else int(rng.integers(3))
            _, _, terminated, truncated, _ = collector.step(action)
            if terminated or truncated:
                break
    made = collector.create_dataset(dataset_id=dataset_id, algorithm_name="tests", author="rgvlm tests",
                                    author_email="-", code_permalink="-", description=dataset_id)
    collector.close()
    return made


@pytest.fixture(scope="module")
def doorkey_rgb(minari_root):
    env = ImgObsWrapper(RGBImgObsWrapper(gym.make("MiniGrid-DoorKey-5x5-v0"), tile_size=8))
    return collect(env, "minigrid/doorkey-rgb/random-v0", episodes=4, steps=20)


@pytest.fixture(scope="module")
def gotoobj(minari_root):
    space = gym.spaces.Dict({"direction": gym.spaces.Discrete(4),
                             "image": gym.spaces.Box(0, 255, (7, 7, 3), dtype=np.uint8),
                             "mission": gym.spaces.Text(max_length=200, charset=MISSION_CHARSET)})
    collector = DataCollector(gym.make("BabyAI-GoToObj-v0"), observation_space=space)
    return collect(collector, "babyai/gotoobj/bot-v0", episodes=4, steps=64, policy=lambda c: BabyAIBot(c.unwrapped))


@pytest.fixture(scope="module")
def empty_fullobs(minari_root):
    env = ImgObsWrapper(FullyObsWrapper(gym.make("MiniGrid-Empty-5x5-v0")))
    return collect(env, "minigrid/empty-full/random-v0", episodes=3, steps=20)


def asked_nothing(tmp_path) -> bool:
    return not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def run_dirs(tmp_path) -> dict:
    return {"out_dir": tmp_path / "run", "cache_dir": tmp_path / "cache"}


def test_image_observations_behind_wrappers_that_cannot_be_recreated(doorkey_rgb, tmp_path):
    """The issue's case: it used to be labelled (answers paid for), then fail writing the output."""
    assert [w.name for w in doorkey_rgb.env_spec.additional_wrappers] == ["RGBImgObsWrapper", "ImgObsWrapper"]
    with pytest.raises(ValueError, match=r"frames=replay: the episodes cannot be replayed.*RGBImgObsWrapper.*Fix:"):
        relabel(doorkey_rgb.spec.dataset_id, "rg_vlm", PARAMS, "minigrid/doorkey-rgb/rg_vlm-v0", frames="replay",
                mission=GOAL, **run_dirs(tmp_path))
    assert asked_nothing(tmp_path)

    summary = relabel(doorkey_rgb.spec.dataset_id, "rg_vlm", PARAMS, "minigrid/doorkey-rgb/rg_vlm-v0", mission=GOAL,
                      **run_dirs(tmp_path))
    assert summary["cost"]["lvlm_calls"] > 0 and summary["source"]["frames"] == "observation"
    note = summary["output"]["env_spec"]
    assert note["written"] is False and note["source"] == "MiniGrid-DoorKey-5x5-v0"
    assert "RGBImgObsWrapper" in note["reason"] and "observation and action spaces" in note["reason"]
    # Named by the environment without its wrappers (the same actions): MiniGrid's words.
    assert summary["action_names"][:3] == ["turn left", "turn right", "move forward"]
    out = minari.load_dataset("minigrid/doorkey-rgb/rg_vlm-v0")
    assert out.env_spec is None and out.observation_space == doorkey_rgb.observation_space
    assert out.action_space == doorkey_rgb.action_space
    assert out.storage.metadata["rgvlm_relabel"]["env_spec"] == note
    np.testing.assert_array_equal(np.concatenate([e.rewards for e in out.iterate_episodes()]),
                                  np.load(tmp_path / "run" / "rg_vlm.npy"))
    for before, after in zip(doorkey_rgb.iterate_episodes(), out.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(before.observations, after.observations)
        np.testing.assert_array_equal(before.actions, after.actions)


def test_symbolic_observations_relabelled_by_replay(gotoobj, tmp_path):
    summary = relabel(gotoobj.spec.dataset_id, "rg_vlm", PARAMS, "babyai/gotoobj/rg_vlm-v0", **run_dirs(tmp_path))
    assert summary["source"]["frames"] == "replay" and summary["output"]["env_spec"]["written"] is True
    assert summary["cost"]["lvlm_calls"] > 0
    assert summary["label_quality"]["rg_vlm"]["completing_steps"] == sum(
        bool(e.terminations[-1]) for e in gotoobj.iterate_episodes()) > 0
    out = minari.load_dataset("babyai/gotoobj/rg_vlm-v0")
    assert out.env_spec.id == "BabyAI-GoToObj-v0"
    out.recover_environment().close()  # what the spec promises: it can be rebuilt


def test_symbolic_observations_behind_wrappers_that_cannot_be_recreated_are_refused(empty_fullobs, tmp_path):
    args = [empty_fullobs.spec.dataset_id, "--method", "rg_vlm", "--output", "minigrid/empty-full/rg_vlm-v0",
            "--mission", GOAL, "--out-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(PARAMS))
    for frames, expected in (("auto", "cannot be replayed.*FullyObsWrapper, ImgObsWrapper.*Fix: collect"),
                             ("observation", r"no observation is an RGB image.*observations \(5x5\) is too small")):
        with pytest.raises(ValueError, match=expected):
            relabel(empty_fullobs.spec.dataset_id, "rg_vlm", PARAMS, "minigrid/empty-full/rg_vlm-v0", mission=GOAL,
                    frames=frames, **run_dirs(tmp_path))
    assert relabel_main([*args, "--params", str(params)]) == 2
    assert asked_nothing(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_minari("minigrid/empty-full/rg_vlm-v0")


# -- malformed datasets: each fails before any query, naming the episode and the field ------------

def pixel_dataset(dataset_id: str, lengths=(9, 12), size: int = 32, reward=None, seed: int = 0):
    """Random RGB observations, no spec (frames from the observations, --mission needed)."""
    rng = np.random.default_rng(seed)
    buffers = []
    for index, length in enumerate(lengths):
        rewards = np.zeros(length, dtype=np.float32) if reward is None else reward(index, length)
        ends = np.zeros(length, dtype=bool)
        ends[-1] = True
        buffers.append(EpisodeBuffer(id=index, observations=rng.integers(0, 256, (length + 1, size, size, 3), dtype=np.uint8),
                                     actions=rng.integers(0, 3, length), rewards=rewards, terminations=ends,
                                     truncations=np.zeros(length, dtype=bool)))
    return minari.create_dataset_from_buffers(dataset_id, buffers, action_space=gym.spaces.Discrete(3),
                                              observation_space=gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
                                              jpeg_encoding=False)


def edit_episode(dataset, episode: int, field: str, value) -> None:
    """Replace one field of one stored episode (what a buggy converter or a hand edit leaves)."""
    with h5py.File(Path(dataset.storage.data_path) / "main_data.hdf5", "r+") as f:
        group = f[f"episode_{episode}"]
        del group[field]
        group.create_dataset(field, data=value)


def refused(dataset_id: str, tmp_path, match: str, **kwargs) -> None:
    with pytest.raises(ValueError, match=match):
        relabel(dataset_id, "rg_vlm", PARAMS, "malformed/out-v0", **{"mission": GOAL, **kwargs}, **run_dirs(tmp_path))
    assert asked_nothing(tmp_path), "the checks came after labelling began"


def test_non_finite_rewards(minari_root, tmp_path):
    def reward(index, length):
        r = np.zeros(length, dtype=np.float32)
        if index == 1:
            r[4] = np.nan
        return r

    pixel_dataset("malformed/nan-v0", reward=reward)
    refused("malformed/nan-v0", tmp_path, r"episode 1, field rewards: nan at step 4")


def test_lengths_that_disagree(minari_root, tmp_path):
    made = pixel_dataset("malformed/lengths-v0")
    edit_episode(made, 1, "rewards", np.zeros(11, dtype=np.float32))  # 12 steps
    refused("malformed/lengths-v0", tmp_path, r"episode 1: the lengths of its fields disagree.*'rewards': 11")
    made = pixel_dataset("malformed/obs-v0")
    edit_episode(made, 0, "observations", np.zeros((7, 32, 32, 3), dtype=np.uint8))  # 9 steps need 10
    refused("malformed/obs-v0", tmp_path, r"episode 0, field observations: 7 entries, expected 10")


def test_empty_episode(minari_root, tmp_path):
    made = pixel_dataset("malformed/empty-v0")
    for field, shape in (("actions", (0,)), ("rewards", (0,)), ("terminations", (0,)), ("truncations", (0,)),
                         ("observations", (1, 32, 32, 3))):
        edit_episode(made, 1, field, np.zeros(shape, dtype=np.uint8 if field == "observations" else np.float32))
    refused("malformed/empty-v0", tmp_path, r"episode 1, field actions: the episode has no steps")


def test_truncated_hdf5(minari_root, tmp_path):
    made = pixel_dataset("malformed/truncated-v0", lengths=(30, 30, 30))
    path = Path(made.storage.data_path) / "main_data.hdf5"
    with open(path, "r+b") as handle:
        handle.truncate(handle.seek(0, 2) // 2)  # a copy cut short
    refused("malformed/truncated-v0", tmp_path, r"(damaged or truncated)")


def test_observations_too_small_to_render(minari_root, tmp_path):
    pixel_dataset("malformed/tiny-v0", size=8)
    refused("malformed/tiny-v0", tmp_path, r"observations \(8x8\) is too small to show an LVLM")


def test_missing_missions_without_mission(gotoobj, minari_root, tmp_path):
    copy = minari_root / "babyai" / "gotoobj" / "nomission-v0"
    shutil.copytree(Path(gotoobj.storage.data_path).parent, copy)
    moved = open_minari(copy)
    with h5py.File(Path(moved.storage.data_path) / "main_data.hdf5", "r+") as f:
        missions = f["episode_2/observations/mission"]
        missions[...] = np.array([b""] * missions.shape[0], dtype=missions.dtype)
    with pytest.raises(ValueError, match=r"episode 2, field observations\['mission'\]: empty.*--mission"):
        relabel(str(copy), "rg_vlm", PARAMS, "malformed/out-v0", **run_dirs(tmp_path))
    assert asked_nothing(tmp_path)
    # With --mission it goes through: the given instruction stands in for the empty one.
    summary = relabel(str(copy), "rg_vlm", PARAMS, "babyai/gotoobj/nomission-rg_vlm-v0", mission="go to the object",
                      **run_dirs(tmp_path))
    assert summary["episodes"] == 4
