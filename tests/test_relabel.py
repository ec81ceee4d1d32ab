"""Relabelling a dataset the project never made (rgvlm.relabel): a Minari dataset the test builds
with Minari's own DataCollector from BabyAI's standard GoToLocal level, driven by minigrid's
BabyAIBot (6 episodes of 4-10 steps) and by random actions (3 episodes; in GoToLocal's one small
room they reach the goal too, after 23-52 steps).

GoToLocal's ground truth: its mission is one sub-task ("go to the red key"), completed at the
terminating step with a positive reward, so the scripted annotator and label quality read
success as that sub-task. Frames come from replaying each episode through
``recover_environment()`` (the 7x7 symbolic view is not an image)."""

from __future__ import annotations

import json

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari import DataCollector
from minigrid.utils.baby_ai_bot import BabyAIBot

from rgvlm.data.frames import EnvReplay, ReplayDiverged, ReplayEpisode, StoredFrames
from rgvlm.data.minari_import import MINIGRID_ACTION_WORDS, from_minari
from rgvlm.data.minari_store import open_minari
from rgvlm.envs import render_frame, reset_quietly
from rgvlm.envs.learner import MISSION_CHARSET
from rgvlm.params import ParamError
from rgvlm.relabel import main as relabel_main
from rgvlm.relabel import relabel

SOURCE = "babyai/gotolocal/bot-v0"
LEVEL = "BabyAI-GoToLocal-v0"
BOT_EPISODES, RANDOM_EPISODES = 6, 3
#: The scripted annotator with little noise: its labels should find GoToLocal's successes.
PARAMS = {
    "labelling": {"backend": "scripted", "scripted": {"score_sd": 0.5, "misattribution": 0.0, "malformed_rate": 0.1}},
    "rg_vlm": {"window_length": 8, "window_stride": 8, "frame_stride": 4},
    "gvl": {"window_length": 8, "frame_stride": 2},
}


@pytest.fixture(scope="module")
def gotolocal(minari_root):
    """The dataset, and the frames rendered while it was collected (episode -> [T + 1, h, w, 3])."""
    space = gym.spaces.Dict({
        "direction": gym.spaces.Discrete(4),
        "image": gym.spaces.Box(0, 255, (7, 7, 3), dtype=np.uint8),
        "mission": gym.spaces.Text(max_length=200, charset=MISSION_CHARSET),
    })
    env = DataCollector(gym.make(LEVEL), observation_space=space)
    rng = np.random.default_rng(0)
    frames = []
    for index in range(BOT_EPISODES + RANDOM_EPISODES):
        reset_quietly(env, 100 + index)
        bot = BabyAIBot(env.unwrapped) if index < BOT_EPISODES else None
        shown = [render_frame(env)]
        while True:
            action = int(bot.replan()) if bot is not None else int(rng.integers(6))
            _, _, terminated, truncated, _ = env.step(action)
            shown.append(render_frame(env))
            if terminated or truncated:
                break
        frames.append(np.stack(shown))
    dataset = env.create_dataset(dataset_id=SOURCE, algorithm_name="BabyAIBot and random actions", author="rgvlm tests",
                                 author_email="-", code_permalink="-", description="GoToLocal for relabelling",
                                 eval_env=LEVEL)
    env.close()
    return dataset, frames


def test_the_view_reads_actions_missions_truth_and_replays_frames(gotolocal):
    dataset, frames = gotolocal
    view = from_minari(dataset)
    assert view.source["frames"] == "replay" and "success" in view.source["ground_truth"]
    assert view.action_names == tuple(MINIGRID_ACTION_WORDS.values())
    assert [e["success"] for e in view.episodes][:BOT_EPISODES] == [True] * BOT_EPISODES
    assert all(e["mission"].startswith("go to ") and e["subtasks"] == [e["mission"]] for e in view.episodes)
    assert int(view.progress.sum()) == sum(e["success"] for e in view.episodes)  # 1 on each success step
    assert view.max_episode_limit == max(e["length"] for e in view.episodes)  # GoToLocal's spec sets no limit
    for index in (0, BOT_EPISODES):  # a bot episode and a random one
        times = [0, 2, view.episodes[index]["length"]]
        np.testing.assert_array_equal(view.frames.frames(index, times, 16), frames[index][times])
    view.frames.close()


def test_replay_that_diverges_is_refused(gotolocal):
    dataset, _ = gotolocal
    episode = dataset[0]
    wrong_seed = EnvReplay(lambda: dataset.recover_environment(), [ReplayEpisode(7, None, episode.actions)],
                           stored=lambda _: episode.observations)
    with pytest.raises(ReplayDiverged, match="episode 0.*step 0"):
        wrong_seed.frames(0, [0, 3], 16)


def test_relabel_with_the_scripted_annotator(gotolocal, minari_root, tmp_path):
    dataset, _ = gotolocal
    out_dir, cache = tmp_path / "run", tmp_path / "cache"
    summary = relabel(SOURCE, "rg_vlm", PARAMS, "babyai/gotolocal/bot-rg_vlm-v0", out_dir=out_dir, cache_dir=cache)
    assert summary == json.loads((out_dir / "summary.json").read_text())
    n = dataset.total_steps
    windows = summary["cost"]["windows"]
    assert summary["transitions"] == n and summary["episodes"] == BOT_EPISODES + RANDOM_EPISODES
    asked = summary["cost"]["lvlm_calls"] + summary["cost"]["cache_hits"]  # a repeated prompt is a hit
    assert asked == 2 * windows + summary["cost"]["reasks"] and summary["cost"]["lvlm_calls"] > windows
    quality = summary["label_quality"]
    assert quality["rg_vlm"]["completing_steps"] == sum(bool(e.terminations[-1]) for e in dataset.iterate_episodes())
    assert quality["rg_vlm"]["auroc_completion"] > 0.95
    assert quality["source_rewards"]["auroc_completion"] == 1.0  # the sparse reward IS the truth here
    assert summary["provenance"]["lvlm"]["backend"] == "scripted"

    relabelled = minari.load_dataset("babyai/gotolocal/bot-rg_vlm-v0")
    rewards = np.load(out_dir / "rg_vlm.npy")
    assert rewards.shape == (n,)
    np.testing.assert_array_equal(np.concatenate([e.rewards for e in relabelled.iterate_episodes()]), rewards)
    assert relabelled.env_spec.id == LEVEL and relabelled.observation_space == dataset.observation_space
    for before, after in zip(dataset.iterate_episodes(), relabelled.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(before.actions, after.actions)
        np.testing.assert_array_equal(before.observations["image"], after.observations["image"])
        assert list(before.observations["mission"]) == list(after.observations["mission"])
        np.testing.assert_array_equal(before.terminations, after.terminations)
        np.testing.assert_array_equal(before.truncations, after.truncations)
    seeds = [m["seed"] for m in relabelled.storage.get_episode_metadata(range(relabelled.total_episodes))]
    assert seeds == [m["seed"] for m in dataset.storage.get_episode_metadata(range(dataset.total_episodes))]

    # A rerun asks nothing: every answer comes from the cache, and the rewards are the same bytes.
    again = relabel(SOURCE, "rg_vlm", PARAMS, "babyai/gotolocal/bot-rg_vlm-v0", out_dir=tmp_path / "again",
                    cache_dir=cache, overwrite=True)
    assert again["cost"]["lvlm_calls"] == 0 and again["cost"]["cache_hits"] == asked
    assert np.load(tmp_path / "again" / "rg_vlm.npy").tobytes() == rewards.tobytes()


def test_gvl_relabels_any_dataset_too(gotolocal, minari_root, tmp_path):
    """GVL needs only frames and the mission: it labels a dataset of another environment, and its
    progress series goes into VOC (the bot's episodes succeed: its progress rises with time)."""
    summary = relabel(SOURCE, "gvl", PARAMS, "babyai/gotolocal/bot-gvl-v0", out_dir=tmp_path / "run",
                      cache_dir=tmp_path / "cache")
    quality = summary["label_quality"]["gvl"]
    assert summary["cost"]["windows"] > 0 and summary["cost"]["fallback_windows"] == 0
    assert quality["voc_source"] == "values" and (tmp_path / "run" / "gvl.values.npy").exists()
    succeeded = sum(bool(e.terminations[-1]) for e in gotolocal[0].iterate_episodes())
    # one sub-task: the scripted progress is 0 until the goal is reached, so VOC is well below 1 here
    assert quality["voc_episodes"] == succeeded > 0 and quality["voc"] > 0.2, quality  # the successful episodes
    assert quality["auroc_completion"] > 0.8


def test_bad_input_fails_before_any_work(gotolocal, minari_root, tmp_path, capsys):
    out = ["--out-dir", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    with pytest.raises(ParamError, match="method.*'nope'.*rg_vlm"):
        relabel(SOURCE, "nope", PARAMS, "tmp/out-v0")
    with pytest.raises(ValueError, match="'vlm_car' reads the suite's symbolic observations.*rg_vlm"):
        relabel(SOURCE, "vlm_car", {**PARAMS, "vlm_car": {}}, "tmp/out-v0", out_dir=tmp_path / "o")
    with pytest.raises(ParamError, match="rg_vlm.window_length"):
        relabel(SOURCE, "rg_vlm", {**PARAMS, "rg_vlm": {"window_length": 0}}, "tmp/out-v0")
    with pytest.raises(ValueError, match="frames='pixels'"):
        relabel(SOURCE, "rg_vlm", PARAMS, "tmp/out-v0", frames="pixels")
    with pytest.raises(ValueError, match="no observation is an RGB image"):
        relabel(SOURCE, "rg_vlm", PARAMS, "tmp/out-v0", frames="observation")
    with pytest.raises(ValueError, match="the source dataset itself"):
        relabel(SOURCE, "rg_vlm", PARAMS, SOURCE, overwrite=True)
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(PARAMS))
    assert relabel_main(["no/such-v0", "--method", "rg_vlm", "--output", "tmp/out-v0", "--params", str(params), *out]) == 2
    error = capsys.readouterr().err
    assert "'no/such-v0' not found" in error and SOURCE in error
    assert relabel_main([SOURCE, "--method", "rg_vlm", "--output", SOURCE, "--params", str(params), *out]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()
    assert open_minari(SOURCE).total_episodes == BOT_EPISODES + RANDOM_EPISODES


def test_stored_frames_are_read_as_they_are():
    episodes = [np.arange(5 * 4 * 6 * 3, dtype=np.uint8).reshape(5, 4, 6, 3)]
    source = StoredFrames.from_arrays(episodes)
    np.testing.assert_array_equal(source.frames(0, [1, 4], tile_size=16), episodes[0][[1, 4]])
    with pytest.raises(ValueError, match="dtype float64.*expected uint8"):
        StoredFrames(lambda e, t: np.zeros((len(t), 4, 4, 3))).frames(0, [0], 16)


@pytest.mark.slow
def test_relabel_with_a_tiny_local_vlm(gotolocal, minari_root, tmp_path):
    """The transformers backend on a tiny random LLaVA built offline: frames rendered by replay go
    into a real model. Its answers are noise, so every window falls back (allowed here)."""
    from tests.support.tiny_models import build_tiny_vlm

    model = build_tiny_vlm("llava", tmp_path / "tiny-llava")
    params = {
        "labelling": {"backend": "transformers", "model": str(model), "device": "cpu", "batch_size": 4,
                     "max_failure_rate": 1.0},
        "rg_vlm": {"window_length": 16, "window_stride": 16, "frame_stride": 8, "tile_size": 8, "max_reasks": 0,
                   "stage1_max_new_tokens": 4, "stage2_max_new_tokens": 4},
    }
    summary = relabel(SOURCE, "rg_vlm", params, "babyai/gotolocal/bot-tiny-v0", out_dir=tmp_path / "run",
                      cache_dir=tmp_path / "cache")
    cost = summary["cost"]
    assert cost["lvlm_calls"] + cost["cache_hits"] == 2 * cost["windows"] and cost["prompt_tokens"] > 0
    assert summary["provenance"]["lvlm"]["backend"] == "transformers"
    assert summary["transitions"] == minari.load_dataset("babyai/gotolocal/bot-tiny-v0").total_steps


@pytest.mark.filterwarnings("ignore:.*is set to None:UserWarning", "ignore:env_spec is None:UserWarning")
def test_image_observations_without_an_environment(minari_root, tmp_path):
    """A dataset with RGB observations and no environment spec: frames are the observations, the
    mission comes from --mission, actions are named by number, success is the ground truth."""
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(1)
    space = gym.spaces.Box(0, 255, (32, 32, 3), dtype=np.uint8)
    images, buffers = [], []
    for index, length in enumerate((5, 9)):
        images.append(rng.integers(0, 256, (length + 1, 32, 32, 3), dtype=np.uint8))
        ends = np.zeros(length, dtype=bool)
        ends[-1] = index == 0
        buffers.append(EpisodeBuffer(id=index, observations=images[-1], actions=rng.integers(0, 3, length),
                                     rewards=ends.astype(np.float32), terminations=ends, truncations=~ends))
    minari.create_dataset_from_buffers("pixels/task-v0", buffers, observation_space=space,
                                       action_space=gym.spaces.Discrete(3), jpeg_encoding=False)
    source = minari.load_dataset("pixels/task-v0")
    with pytest.raises(ValueError, match="no 'mission' entry.*--mission"):
        from_minari(source)
    with pytest.raises(ValueError, match="no environment spec"):
        from_minari(source, frames="replay", mission="reach the goal")
    view = from_minari(source, mission="reach the goal")
    assert view.source["frames"] == "observation" and view.action_names == ("action 0", "action 1", "action 2")
    np.testing.assert_array_equal(view.frames.frames(1, [0, 4, 9], 16), images[1][[0, 4, 9]])
    summary = relabel("pixels/task-v0", "rg_vlm", PARAMS, "pixels/task-rg_vlm-v0", mission="reach the goal",
                      out_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    assert summary["label_quality"]["rg_vlm"]["completing_steps"] == 1
    relabelled = minari.load_dataset("pixels/task-rg_vlm-v0")
    assert relabelled.env_spec is None
    np.testing.assert_array_equal(relabelled[1].observations, images[1])
