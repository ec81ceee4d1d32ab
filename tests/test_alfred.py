"""The ALFRED adapter (rgvlm.data.alfred, ``python -m rgvlm.data import-alfred``), fixture-tested
only: no real ALFRED data and no AI2-THOR here. The fixture (tests/fixtures/alfred/, written by
its make_fixture.py) holds two trajectories in ALFRED's published traj_data.json format with
drawn frames: one with filler frames, JPEG files named .png in ``images`` and three frames after
the last action; one with a frame per action and one after, PNG files.

What each test expects is read from the fixture's JSON and images here, by rules written out in
the test (or typed in from the JSON), never by the adapter's own helpers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rgvlm.data.__main__ import main as data_main
from rgvlm.data.minari_import import from_minari
from rgvlm.data.minari_store import open_minari
from rgvlm.relabel import main as relabel_main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "alfred"
APPLE = FIXTURE / "pick_and_place_simple-Apple-None-DiningTable-10" / "trial_T20190907_000001_000001"
CLOCK = FIXTURE / "look_at_obj_in_light-AlarmClock-None-DeskLamp-301" / "trial_T20190908_000002_000002"
DATASET = "alfred/fixture-v0"
#: ALFRED's low-level actions in the adapter's documented order (README, rgvlm/data/alfred.py).
VOCABULARY = ["MoveAhead_25", "RotateLeft_90", "RotateRight_90", "LookUp_15", "LookDown_15", "PickupObject",
              "PutObject", "OpenObject", "CloseObject", "ToggleObjectOn", "ToggleObjectOff", "SliceObject"]
#: Typed in from the fixture's JSON: each trajectory's low actions and sub-goals done after each
#: (0 at the start; a sub-goal is done at its last low action).
EXPECTED = {
    APPLE: {"actions": ["LookDown_15", "MoveAhead_25", "MoveAhead_25", "RotateRight_90", "MoveAhead_25", "PickupObject",
                        "RotateLeft_90", "MoveAhead_25", "MoveAhead_25", "LookUp_15", "PutObject"],
            "progress": [0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 3, 4]},
    CLOCK: {"actions": ["RotateLeft_90", "MoveAhead_25", "LookDown_15", "PickupObject", "RotateRight_90",
                        "MoveAhead_25", "ToggleObjectOn"],
            "progress": [0, 0, 0, 1, 2, 2, 3, 4]},
}
PARAMS = {
    "labelling": {"backend": "scripted", "scripted": {"score_sd": 0.5, "misattribution": 0.0, "malformed_rate": 0.1}},
    "rg_vlm": {"window_length": 4, "window_stride": 4, "frame_stride": 2},
}


def traj(directory: Path) -> dict:
    return json.loads((directory / "traj_data.json").read_text())


def expected_frames(directory: Path) -> np.ndarray:
    """The frame before each low action (the first ``images`` entry of its low_idx) and then the
    folder's last image, decoded here; a listed ``.png`` may be stored as ``.jpg``."""
    data, folder = traj(directory), directory / "raw_images"
    names = {}
    for entry in data["images"]:
        names.setdefault(entry["low_idx"], entry["image_name"])
    paths = []
    for low_idx in range(len(data["plan"]["low_actions"])):
        name = Path(names[low_idx])
        paths.append(folder / name if (folder / name).exists() else folder / name.with_suffix(".jpg"))
    paths.append(sorted(folder.iterdir())[-1])
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def truth_progress(directory: Path) -> list[int]:
    """Sub-goals done after each step: a sub-goal is done at the last low action with its high_idx."""
    high_idx = [a["high_idx"] for a in traj(directory)["plan"]["low_actions"]]
    last = {g: max(t for t, h in enumerate(high_idx) if h == g) for g in set(high_idx)}
    return [0] + [sum(1 for end in last.values() if end <= t) for t in range(len(high_idx))]


@pytest.fixture(scope="module")
def root(minari_root):
    return minari_root


@pytest.fixture(scope="module")
def imported(root):
    assert data_main(["import-alfred", str(APPLE), str(CLOCK), "--id", DATASET, "--root", str(root)]) == 0
    return open_minari(DATASET, root)


def test_the_fixture_follows_alfreds_format():
    for directory in (APPLE, CLOCK):
        data = traj(directory)
        assert {"task_id", "task_type", "pddl_params", "scene", "plan", "images", "turk_annotations", "template"} <= set(data)
        assert data["plan"]["high_pddl"][-1]["discrete_action"]["action"] == "NoOp"
        assert all(set(image) == {"high_idx", "low_idx", "image_name"} for image in data["images"])
        assert all(len(ann["high_descs"]) == len(data["plan"]["high_pddl"]) - 1 for ann in data["turk_annotations"]["anns"])
        assert truth_progress(directory) == EXPECTED[directory]["progress"]
    size = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file() and p.name != "make_fixture.py")
    assert size < 100_000


def test_every_transition_mission_subtask_and_progress_as_the_fixture_says(imported):
    assert imported.total_episodes == 2 and imported.env_spec is None
    assert imported.total_steps == sum(len(traj(d)["plan"]["low_actions"]) for d in (APPLE, CLOCK)) == 18
    assert int(imported.action_space.n) == len(VOCABULARY)
    metadata = imported.storage.metadata
    assert metadata["rgvlm_alfred"]["alfred_actions"] == VOCABULARY
    assert len(metadata["action_names"]) == len(VOCABULARY) and metadata["action_names"][0] == "move ahead"
    metas = list(imported.storage.get_episode_metadata(range(2)))
    for episode, meta, directory in zip(imported.iterate_episodes(), metas, (APPLE, CLOCK), strict=True):
        data = traj(directory)
        ann = data["turk_annotations"]["anns"][0]
        length = len(data["plan"]["low_actions"])
        assert [VOCABULARY[a] for a in episode.actions] == EXPECTED[directory]["actions"]
        assert [a["discrete_action"]["action"] for a in data["plan"]["low_actions"]] == EXPECTED[directory]["actions"]
        np.testing.assert_array_equal(episode.observations["image"], expected_frames(directory))
        assert list(episode.observations["mission"]) == [ann["task_desc"]] * (length + 1)
        assert list(meta["subtasks"]) == ann["high_descs"]  # the NoOp is no sub-task
        assert meta["task_id"] == data["task_id"] and meta["task_type"] == data["task_type"]
        assert meta["scene"] == data["scene"]["floor_plan"] and meta["annotation"] == 0 and meta["kind"] == "expert"
        progress = EXPECTED[directory]["progress"]
        assert list(episode.infos["progress"]) == progress
        assert list(episode.infos["completed"]) == [0] + list(np.diff(progress))
        assert list(episode.infos["num_subtasks"]) == [4] * (length + 1)
        assert list(episode.rewards) == [0.0] * (length - 1) + [1.0]  # the expert demonstration succeeds at its end
        assert list(episode.terminations) == [False] * (length - 1) + [True] and not any(episode.truncations)


def test_the_relabelling_view_reads_subtasks_words_frames_and_truth(imported):
    view = from_minari(imported)
    assert view.source["frames"] == "observation:image" and view.source["ground_truth"] == "progress info"
    assert view.action_names == tuple(imported.storage.metadata["action_names"])
    for index, directory in enumerate((APPLE, CLOCK)):
        ann = traj(directory)["turk_annotations"]["anns"][0]
        episode = view.episodes[index]
        assert episode["subtasks"] == ann["high_descs"] and episode["k"] == 4 and episode["mission"] == ann["task_desc"]
        assert episode["success"] and episode["final_progress"] == 4
        assert view.progress[view.episode_steps(index)].tolist() == EXPECTED[directory]["progress"][1:]
        times = [0, 3, episode["length"]]
        np.testing.assert_array_equal(view.frames.frames(index, times, 16), expected_frames(directory)[times])


def test_another_annotation_and_subtasks_worded_from_the_plan(root):
    assert data_main(["import-alfred", str(APPLE), "--id", "alfred/ann1-v0", "--root", str(root),
                      "--annotation", "1", "--subtasks", "plan"]) == 0
    dataset = open_minari("alfred/ann1-v0", root)
    assert dataset[0].observations["mission"][0] == "Move the apple from the counter to the table."  # whitespace collapsed
    meta = next(iter(dataset.storage.get_episode_metadata([0])))
    assert list(meta["subtasks"]) == ["go to the countertop", "pick up the apple", "go to the diningtable",
                                      "put the apple in or on the diningtable"]
    assert meta["annotation"] == 1


@pytest.mark.filterwarnings("ignore:env_spec is None:UserWarning")  # no AI2-THOR: by design
def test_relabel_runs_rg_vlm_on_the_import(imported, root, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    out_dir, cache = tmp_path / "run", tmp_path / "cache"
    args = [DATASET, "--method", "rg_vlm", "--output", "alfred/fixture-rg_vlm-v0", "--params", str(params),
            "--root", str(root), "--cache-dir", str(cache)]
    assert relabel_main([*args, "--out-dir", str(out_dir)]) == 0
    assert "relabelled 2 episodes, 18 transitions" in capsys.readouterr().out
    summary = json.loads((out_dir / "summary.json").read_text())
    cost = summary["cost"]
    assert cost["lvlm_calls"] > 0 and cost["lvlm_calls"] + cost["cache_hits"] == 2 * cost["windows"] + cost["reasks"]
    assert cost["windows"] == 3 + 2  # windows of 4 over 11 and 7 steps
    quality = summary["label_quality"]
    assert quality["ground_truth"] == "progress info"
    assert quality["rg_vlm"]["completing_steps"] == 8 and quality["rg_vlm"]["transitions"] == 18
    assert quality["rg_vlm"]["auroc_completion"] > 0.9
    assert quality["source_rewards"]["completing_steps"] == 8  # the sparse reward marks only the last of them

    relabelled = open_minari("alfred/fixture-rg_vlm-v0", root)
    rewards = np.load(out_dir / "rg_vlm.npy")
    np.testing.assert_array_equal(np.concatenate([e.rewards for e in relabelled.iterate_episodes()]), rewards)
    assert not np.array_equal(rewards, np.concatenate([e.rewards for e in imported.iterate_episodes()]))
    for before, after in zip(imported.iterate_episodes(), relabelled.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(before.observations["image"], after.observations["image"])
        np.testing.assert_array_equal(before.actions, after.actions)
        np.testing.assert_array_equal(before.infos["progress"], after.infos["progress"])
    assert relabelled.storage.metadata["action_names"] == imported.storage.metadata["action_names"]
    assert [list(m["subtasks"]) for m in relabelled.storage.get_episode_metadata(range(2))] == \
        [traj(d)["turk_annotations"]["anns"][0]["high_descs"] for d in (APPLE, CLOCK)]

    # A rerun asks nothing: every answer comes from the cache.
    assert relabel_main([*args, "--out-dir", str(tmp_path / "again"), "--force"]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())["cost"]
    assert again["lvlm_calls"] == 0 and again["cache_hits"] == cost["lvlm_calls"] + cost["cache_hits"]
    assert np.load(tmp_path / "again" / "rg_vlm.npy").tobytes() == rewards.tobytes()


def broken_copy(tmp_path: Path, source: Path, edit) -> Path:
    """A copy of a fixture trajectory with its traj_data.json changed by ``edit``."""
    target = tmp_path / source.name
    shutil.copytree(source, target)
    data = traj(target)
    edit(data)
    (target / "traj_data.json").write_text(json.dumps(data))
    return target


def unknown_action(data):
    data["plan"]["low_actions"][2]["discrete_action"]["action"] = "Teleport_1"


def frames_short(data):
    data["images"] = [i for i in data["images"] if i["low_idx"] < len(data["plan"]["low_actions"]) - 1]


def descs_short(data):
    data["turk_annotations"]["anns"][0]["high_descs"].pop()


@pytest.mark.parametrize(("edit", "args", "message"), [
    (unknown_action, [], r"low action 2 is 'Teleport_1', not one of ALFRED's discrete low-level actions \(MoveAhead_25"),
    (frames_short, [], r"'images' has frames for 6 of the 7 low actions \(none for low_idx \[6\]\)"),
    (None, ["--annotation", "2"], r"annotation 2 asked, the trajectory has 2 \(indices 0\.\.1\)"),
    (descs_short, [], r"annotation 0 has 3 high_descs for 4 sub-goals.*--subtasks plan"),
    (lambda data: data.pop("plan"), [], r"no 'plan'; expected .*test splits ship no plan"),  # a test split's
])
def test_bad_trajectories_fail_before_any_frame_is_read(edit, args, message, root, tmp_path, capsys):
    bad = broken_copy(tmp_path, CLOCK, edit or (lambda data: None))
    # The good trajectory listed first has unreadable frames: the bad one's error must come first.
    good = tmp_path / "good"
    shutil.copytree(APPLE, good)
    for frame in (good / "raw_images").iterdir():
        frame.write_bytes(b"not an image")
    assert data_main(["import-alfred", str(good), str(bad), "--id", "alfred/bad-v0", "--root", str(root), *args]) == 2
    assert capsys.readouterr().err.startswith("python -m rgvlm.data import-alfred: ")
    from rgvlm.data.alfred import import_alfred

    with pytest.raises(ValueError, match=message):
        import_alfred([good, bad], "alfred/bad-v0", root=root, annotation=int(args[1]) if args else 0)
    assert not (root / "alfred" / "bad-v0").exists()


def test_missing_files_are_named(root, tmp_path):
    from rgvlm.data.alfred import import_alfred

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no traj_data.json; expected an ALFRED trajectory directory"):
        import_alfred([APPLE, tmp_path / "empty"], "alfred/bad-v0", root=root)
    missing = tmp_path / "missing"
    shutil.copytree(CLOCK, missing)
    (missing / "raw_images" / "000000003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no frame '000000003.png' \(low action 3\)"):
        import_alfred([missing], "alfred/bad-v0", root=root)
    (missing / "raw_images" / "000000007.png").unlink()  # the frame after the last action
    shutil.copy2(CLOCK / "raw_images" / "000000003.png", missing / "raw_images")
    with pytest.raises(ValueError, match=r"no frame after 000000006.png, the first frame of the last low action \(6\)"):
        import_alfred([missing], "alfred/bad-v0", root=root)
    with pytest.raises(FileNotFoundError, match=r"no frame folder high_res_images/"):
        import_alfred([CLOCK], "alfred/bad-v0", root=root, frames_dir="high_res_images")
    with pytest.raises(FileExistsError, match="already exists"):
        import_alfred([CLOCK], DATASET, root=root)
    assert not (root / "alfred" / "bad-v0").exists()
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no staging folder left behind


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:env_spec is None:UserWarning")
def test_the_frames_reach_a_real_model(imported, root, tmp_path, monkeypatch):
    """The transformers backend on a tiny random LLaVA built offline: the scripted annotator reads
    no frames, so here the stored ALFRED frames go into a real model (its answers are noise, so
    windows may fall back)."""
    from rgvlm.data.frames import StoredFrames
    from rgvlm.relabel import relabel
    from tests.support.tiny_models import build_tiny_vlm

    shown = []
    original = StoredFrames.frames

    def spy(self, episode, times, tile_size):
        frames = original(self, episode, times, tile_size)
        shown.append((episode, list(times), frames))
        return frames

    monkeypatch.setattr(StoredFrames, "frames", spy)
    model = build_tiny_vlm("llava", tmp_path / "tiny-llava")
    params = {
        "labelling": {"backend": "transformers", "model": str(model), "device": "cpu", "batch_size": 4,
                     "max_failure_rate": 1.0},
        "rg_vlm": {"window_length": 4, "window_stride": 4, "frame_stride": 2, "max_reasks": 0,
                   "stage1_max_new_tokens": 4, "stage2_max_new_tokens": 4},
    }
    summary = relabel(DATASET, "rg_vlm", params, "alfred/fixture-tiny-v0", root=root, out_dir=tmp_path / "run",
                      cache_dir=tmp_path / "cache")
    cost = summary["cost"]
    assert cost["lvlm_calls"] + cost["cache_hits"] == 2 * cost["windows"] and cost["prompt_tokens"] > 0
    assert summary["provenance"]["lvlm"]["backend"] == "transformers"
    assert sorted(e for e, _, _ in shown) == [0, 1]  # each episode's frames read once
    for episode, times, frames in shown:
        assert times == sorted({0, 2, 4, 6, 8, 10, 11} if episode == 0 else {0, 2, 4, 6, 7})
        np.testing.assert_array_equal(frames, expected_frames((APPLE, CLOCK)[episode])[times])
