"""ALFRED trajectories as a Minari dataset that ``python -m rgvlm.relabel`` labels.

``python -m rgvlm.data import-alfred TRAJ_DIR [TRAJ_DIR ...] --id alfred/expert-v0`` reads
each ALFRED trajectory directory (``traj_data.json`` and its frame folder, ``raw_images/`` by
default) in ALFRED's published format (askforalfred/alfred, ``data/README.md``) and writes one
Minari episode per trajectory:

- observations ``{"image", "mission"}``, T + 1 per episode for T low-level actions. ALFRED's
  ``images`` list maps every saved frame to the low action it was taken before (``low_idx``);
  an action with smooth motion or time delays has several ("filler" frames). Observation t is
  the first frame of low action t, as ALFRED's own models pick them; the last observation is
  the last image file of the folder (ALFRED saves frames after the last action; its models take
  the last as the "stop" frame). The mission is the chosen annotation's ``task_desc``
  (``turk_annotations.anns[annotation]``, whitespace collapsed).
- actions: the low action's ``discrete_action.action`` as an index into
  :data:`ALFRED_ACTIONS` (ALFRED's twelve discrete low-level actions, in a fixed order). The
  interaction's target (object id, mask) is not kept: the action space is the action type.
- sub-tasks: the sub-goals of ``plan.high_pddl`` in order, without the ``NoOp`` ALFRED appends
  at the end; worded by the annotation's ``high_descs`` (one per sub-goal; ``subtasks="plan"``:
  from the sub-goal's ``discrete_action`` instead, e.g. "pick up the apple"). Stored per episode
  as the metadata ``subtasks``, which :func:`rgvlm.data.minari_import.from_minari` reads.
- ground truth, the ``infos``: ``progress`` (sub-goals done, T + 1 values, 0 at the start),
  ``completed`` and ``num_subtasks``. A low action's sub-goal is done when the next low action
  belongs to a later sub-goal (its ``high_idx`` is higher); the last action completes the last
  sub-goal (ALFRED keeps only successful demonstrations).
- rewards: the sparse task reward, 1 on the last step (terminated there; nothing truncated).
- no environment spec: AI2-THOR is not available here, so no episode can be replayed or rolled
  out. The dataset's metadata ``action_names`` holds the words the prompts use.

Every trajectory is read and checked (files, actions, annotation index, frame list) before the
first image is decoded; the dataset is written atomically (:func:`rgvlm.data.minari_store.write_minari`).
"""

from __future__ import annotations

import json
import string
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgvlm.data.minari_store import check_writable, write_minari

#: ALFRED's discrete low-level actions (``discrete_action.action`` of ``plan.low_actions``), in
#: the order of the action indices, with the words the prompts use for them.
ALFRED_ACTIONS: tuple[tuple[str, str], ...] = (
    ("MoveAhead_25", "move ahead"),
    ("RotateLeft_90", "turn left"),
    ("RotateRight_90", "turn right"),
    ("LookUp_15", "look up"),
    ("LookDown_15", "look down"),
    ("PickupObject", "pick up an object"),
    ("PutObject", "put the held object down"),
    ("OpenObject", "open an object"),
    ("CloseObject", "close an object"),
    ("ToggleObjectOn", "turn an object on"),
    ("ToggleObjectOff", "turn an object off"),
    ("SliceObject", "slice an object"),
)
ACTION_INDEX = {name: index for index, (name, _) in enumerate(ALFRED_ACTIONS)}
ACTION_WORDS = tuple(word for _, word in ALFRED_ACTIONS)
#: How ``subtasks="plan"`` words ALFRED's high-level sub-goals (``plan.high_pddl`` discrete actions).
SUBGOAL_WORDS = {
    "GotoLocation": "go to the {0}",
    "PickupObject": "pick up the {0}",
    "PutObject": "put the {0} in or on the {1}",
    "OpenObject": "open the {0}",
    "CloseObject": "close the {0}",
    "CoolObject": "cool the {0}",
    "HeatObject": "heat the {0}",
    "CleanObject": "clean the {0}",
    "SliceObject": "slice the {0}",
    "ToggleObject": "turn on the {0}",
}
END_SUBGOAL = "NoOp"
TRAJ_FILE = "traj_data.json"
FRAMES_DIR = "raw_images"
#: ALFRED's lists name ``.png`` files; its full release ships the raw frames as ``.jpg``: either is found.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SUBTASK_SOURCES = ("annotation", "plan")
DEFAULT_ID = "alfred/expert-v0"


@dataclass(frozen=True)
class AlfredTrajectory:
    """One ALFRED trajectory, read and checked; its frames are decoded by :func:`load_frames`."""

    directory: Path
    task_id: str
    task_type: str
    scene: str
    annotation: int
    mission: str
    subtasks: tuple[str, ...]
    actions: np.ndarray  # int64 [T], indices into ALFRED_ACTIONS
    subgoal: np.ndarray  # int64 [T], the sub-goal (high_idx) of each low action
    frame_files: tuple[Path, ...]  # T + 1: the frame before each low action, then the last frame

    @property
    def progress(self) -> np.ndarray:
        """Sub-goals done before the first action and after each one, int64 [T + 1] (module docstring)."""
        after = np.append(self.subgoal[1:], len(self.subtasks))
        return np.concatenate([[0], after]).astype(np.int64)


def _get(obj: Any, path: Sequence[str | int], where: str, expected: str) -> Any:
    """``obj[path[0]][path[1]]...`` with an error naming the missing key and what was expected."""
    value = obj
    for depth, key in enumerate(path):
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            trail = " -> ".join(repr(k) for k in path[: depth + 1])
            raise ValueError(f"{where}: no {trail}; expected {expected} (ALFRED's traj_data.json format)") from None
    return value


def _frame_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, else the same stem with another image suffix (module docstring)."""
    exact = folder / name
    if exact.is_file():
        return exact
    stem = Path(name).stem
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_trajectory(directory: str | Path, annotation: int = 0, subtasks: str = "annotation",
                    frames_dir: str = FRAMES_DIR) -> AlfredTrajectory:
    """Read and check one ALFRED trajectory directory (module docstring); decodes no image.
    Raises FileNotFoundError or ValueError naming the file, the value and what was expected."""
    if subtasks not in SUBTASK_SOURCES:
        raise ValueError(f"subtasks={subtasks!r}: expected one of {', '.join(SUBTASK_SOURCES)}")
    directory = Path(directory)
    path = directory / TRAJ_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {TRAJ_FILE}; expected an ALFRED trajectory directory "
                                f"({TRAJ_FILE} and its frames in {frames_dir}/)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file ({error})") from None
    where = str(path)

    anns = _get(data, ["turk_annotations", "anns"], where, "a list of language annotations")
    if not isinstance(anns, list) or not anns:
        raise ValueError(f"{where}: 'turk_annotations' -> 'anns' is {anns!r}; expected a non-empty list of annotations")
    if not 0 <= annotation < len(anns):
        raise ValueError(f"{where}: annotation {annotation} asked, the trajectory has {len(anns)} "
                         f"(indices 0..{len(anns) - 1})")
    ann = anns[annotation]
    task_desc = _get(ann, ["task_desc"], f"{where} annotation {annotation}", "the goal instruction")
    mission = " ".join(str(task_desc).split())
    if not mission:
        raise ValueError(f"{where}: annotation {annotation} has an empty 'task_desc'; expected the goal instruction")

    high = _get(data, ["plan", "high_pddl"], where, "the expert plan's sub-goals "
                "(ALFRED's test splits ship no plan: only train and valid trajectories can be imported)")
    low = _get(data, ["plan", "low_actions"], where, "the expert plan's low-level actions")
    if not isinstance(high, list) or not isinstance(low, list) or not low:
        raise ValueError(f"{where}: 'plan' holds {type(high).__name__} high_pddl and {len(low) if isinstance(low, list) else low!r} "
                         "low_actions; expected a list of sub-goals and a non-empty list of low actions")
    names = [str(_get(h, ["discrete_action", "action"], f"{where} high_pddl {i}", "the sub-goal's action"))
             for i, h in enumerate(high)]
    if names and names[-1] == END_SUBGOAL:
        names, high = names[:-1], high[:-1]
    if not names or END_SUBGOAL in names:
        raise ValueError(f"{where}: plan.high_pddl actions {names}: expected one or more sub-goals, "
                         f"then only at the end ALFRED's {END_SUBGOAL!r}")
    for i, h in enumerate(high):
        if h.get("high_idx", i) != i:
            raise ValueError(f"{where}: high_pddl {i} has high_idx {h.get('high_idx')!r}; expected {i} (its position)")
    n = len(names)

    actions, subgoal = [], []
    for t, step in enumerate(low):
        name = _get(step, ["discrete_action", "action"], f"{where} low action {t}", "the low-level action")
        if name not in ACTION_INDEX:
            raise ValueError(f"{where}: low action {t} is {name!r}, not one of ALFRED's discrete low-level actions "
                             f"({', '.join(ACTION_INDEX)})")
        high_idx = _get(step, ["high_idx"], f"{where} low action {t}", "the sub-goal index")
        if not isinstance(high_idx, int) or not 0 <= high_idx < n or (subgoal and high_idx < subgoal[-1]):
            raise ValueError(f"{where}: low action {t} has high_idx {high_idx!r}; expected a sub-goal index 0..{n - 1}, "
                             f"never below the previous action's ({subgoal[-1] if subgoal else 0})")
        actions.append(ACTION_INDEX[name])
        subgoal.append(high_idx)
    T = len(actions)

    images = _get(data, ["images"], where, "the list of frames ({low_idx, high_idx, image_name} each)")
    first: dict[int, str] = {}
    previous = -1
    for i, image in enumerate(images if isinstance(images, list) else []):
        low_idx = _get(image, ["low_idx"], f"{where} images {i}", "the low action the frame precedes")
        name = _get(image, ["image_name"], f"{where} images {i}", "the frame's file name")
        if not isinstance(low_idx, int) or not previous <= low_idx < T:
            raise ValueError(f"{where}: images {i} ({name}) has low_idx {low_idx!r}; expected 0..{T - 1} "
                             f"(the plan has {T} low actions), in order")
        if image.get("high_idx", subgoal[low_idx]) != subgoal[low_idx]:
            raise ValueError(f"{where}: images {i} ({name}) has high_idx {image.get('high_idx')!r}; its low action "
                             f"{low_idx} belongs to sub-goal {subgoal[low_idx]}")
        first.setdefault(low_idx, str(name))
        previous = low_idx
    if len(first) != T:
        missing = [t for t in range(T) if t not in first]
        raise ValueError(f"{where}: 'images' has frames for {len(first)} of the {T} low actions (none for low_idx "
                         f"{missing[:10]}); expected at least one frame before each low action")

    folder = directory / frames_dir
    if not folder.is_dir():
        raise FileNotFoundError(f"{directory}: no frame folder {frames_dir}/ (ALFRED's raw_images/; "
                                "pass the folder that holds the frames)")
    files = []
    for t in range(T):
        found = _frame_file(folder, first[t])
        if found is None:
            raise FileNotFoundError(f"{folder}: no frame {first[t]!r} (low action {t}), nor the same name with "
                                    f"{', '.join(IMAGE_SUFFIXES)}")
        files.append(found)
    present = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                     key=lambda p: p.name)
    if present[-1].stem <= files[-1].stem:  # ALFRED's names are zero-padded frame numbers
        raise ValueError(f"{folder}: no frame after {files[-1].name}, the first frame of the last low action "
                         f"({T - 1}); expected the frames ALFRED saves after the last action (the last is the "
                         "final observation)")
    files.append(present[-1])

    if subtasks == "annotation":
        descs = _get(ann, ["high_descs"], f"{where} annotation {annotation}", "one step instruction per sub-goal")
        if not isinstance(descs, list) or len(descs) != n:
            raise ValueError(f"{where}: annotation {annotation} has {len(descs) if isinstance(descs, list) else descs!r} "
                             f"high_descs for {n} sub-goals; expected one per sub-goal (or word them from the plan: "
                             "subtasks='plan', --subtasks plan)")
        texts = tuple(" ".join(str(d).split()) for d in descs)
    else:
        words = []
        for i, (name, h) in enumerate(zip(names, high, strict=True)):
            if name not in SUBGOAL_WORDS:
                raise ValueError(f"{where}: high_pddl {i} is {name!r}, not a sub-goal this reader words "
                                 f"({', '.join(SUBGOAL_WORDS)}); use subtasks='annotation'")
            args = [str(a) for a in h["discrete_action"].get("args") or []]
            needed = SUBGOAL_WORDS[name].count("{")
            if len(args) < needed:
                raise ValueError(f"{where}: high_pddl {i} ({name}) has args {args}; expected {needed}")
            words.append(SUBGOAL_WORDS[name].format(*args))
        texts = tuple(words)
    if any(not text for text in texts):
        raise ValueError(f"{where}: an empty sub-goal description in {list(texts)}")

    scene = data.get("scene") or {}
    return AlfredTrajectory(
        directory=directory, task_id=str(data.get("task_id", directory.name)), task_type=str(data.get("task_type", "")),
        scene=str(scene.get("floor_plan", "")), annotation=annotation, mission=mission, subtasks=texts,
        actions=np.asarray(actions, dtype=np.int64), subgoal=np.asarray(subgoal, dtype=np.int64),
        frame_files=tuple(files),
    )


def load_frames(trajectory: AlfredTrajectory) -> np.ndarray:
    """The trajectory's T + 1 frames as uint8 [T + 1, h, w, 3] (RGB)."""
    from PIL import Image

    frames = []
    for path in trajectory.frame_files:
        try:
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except OSError as error:
            raise ValueError(f"{path}: not a readable image ({error})") from None
        if frames[-1].shape != frames[0].shape:
            raise ValueError(f"{path}: a {frames[-1].shape[1]}x{frames[-1].shape[0]} frame; the trajectory's first "
                             f"frame ({trajectory.frame_files[0].name}) is {frames[0].shape[1]}x{frames[0].shape[0]}")
    return np.stack(frames)


def mission_space(missions: Sequence[str]):
    """A ``Text`` space holding every mission (printable ASCII and whatever else they use)."""
    import gymnasium as gym

    charset = set(string.ascii_letters + string.digits + string.punctuation + " ")
    for mission in missions:
        charset |= set(mission)
    return gym.spaces.Text(max_length=max(512, *(len(m) for m in missions)), min_length=1,
                           charset="".join(sorted(charset)))


def episode_buffer(index: int, trajectory: AlfredTrajectory, frames: np.ndarray):
    """One Minari ``EpisodeBuffer`` of ``trajectory`` (module docstring)."""
    from minari.data_collector import EpisodeBuffer

    length = len(trajectory.actions)
    progress = trajectory.progress
    ends = np.zeros(length, dtype=bool)
    ends[-1] = True
    return EpisodeBuffer(
        id=index, observations={"image": frames, "mission": [trajectory.mission] * (length + 1)},
        actions=trajectory.actions, rewards=ends.astype(np.float32), terminations=ends,
        truncations=np.zeros(length, dtype=bool),
        infos={"progress": progress, "completed": np.concatenate([[0], np.diff(progress)]).astype(np.int64),
               "num_subtasks": np.full(length + 1, len(trajectory.subtasks), dtype=np.int64)},
    )


def import_alfred(directories: Sequence[str | Path], dataset_id: str = DEFAULT_ID, *, root: str | Path | None = None,
                  overwrite: bool = False, annotation: int = 0, subtasks: str = "annotation",
                  frames_dir: str = FRAMES_DIR):
    """Write the ALFRED trajectories ``directories`` as the Minari dataset ``dataset_id`` (module
    docstring) and return it. Every input is checked before the first frame is decoded."""
    import gymnasium as gym

    if not directories:
        raise ValueError("no trajectory directory given; expected one or more ALFRED trajectory directories")
    check_writable(dataset_id, root, overwrite)
    trajectories = [read_trajectory(d, annotation, subtasks, frames_dir) for d in directories]
    buffers, shape = [], None
    for index, trajectory in enumerate(trajectories):
        frames = load_frames(trajectory)
        if shape is None:
            shape = frames.shape[1:]
        elif frames.shape[1:] != shape:
            raise ValueError(f"{trajectory.directory}: frames of {frames.shape[2]}x{frames.shape[1]}; those of "
                             f"{trajectories[0].directory} are {shape[1]}x{shape[0]}: one dataset holds one frame size")
        buffers.append(episode_buffer(index, trajectory, frames))
    space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, shape, dtype=np.uint8),
                             "mission": mission_space([t.mission for t in trajectories])})
    with warnings.catch_warnings():  # no environment, by design: the description says why
        warnings.filterwarnings("ignore", message=r"env_spec is None", category=UserWarning)
        return write_minari(
            dataset_id, buffers, env=None, observation_space=space, action_space=gym.spaces.Discrete(len(ALFRED_ACTIONS)),
            root=root, overwrite=overwrite,
            episode_metadata=[{"kind": "expert", "task_id": t.task_id, "task_type": t.task_type, "scene": t.scene,
                               "trial": t.directory.name, "annotation": t.annotation, "subtasks": list(t.subtasks)}
                              for t in trajectories],
            extra_metadata={"action_names": list(ACTION_WORDS),
                            "rgvlm_alfred": {"alfred_actions": [name for name, _ in ALFRED_ACTIONS],
                                             "annotation": annotation, "subtasks": subtasks, "frames_dir": frames_dir,
                                             "task_ids": [t.task_id for t in trajectories]}},
            algorithm_name="ALFRED expert demonstrations (PDDL planner)",
            author="rgvlm",
            description=(
                "ALFRED expert demonstrations imported by `python -m rgvlm.data import-alfred`: image observations "
                "(the frame before each low-level action, then the last frame) and the annotation's goal as the "
                "mission; actions are ALFRED's discrete low-level actions (metadata rgvlm_alfred.alfred_actions); "
                "infos hold the sub-goal progress (ground truth for diagnostics), episode metadata the sub-goal "
                "texts. No environment: AI2-THOR is not available, so episodes cannot be replayed or rolled out."),
        )
