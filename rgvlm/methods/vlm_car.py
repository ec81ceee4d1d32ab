"""VLM-CaR, code as reward (Venuto et al., 2024): the LVLM writes programs, the programs label.

The LVLM is asked a handful of times instead of once per transition:

1. Decomposition, once per distinct mission: the LVLM sees the goal and two frames (the first
   and the last state of one episode with that mission; rendered by replay, skipped for a
   text-only backend) and answers the ordered sub-tasks as a JSON list of strings
   (``prompts/vlm_car_decompose.txt``). An answer the parser rejects is re-asked up to
   ``max_reasks`` times with the reason; a mission whose answers all fail gets no reward.
2. Code, once per distinct sub-task text: the LVLM writes ``def check(obs) -> bool`` over the
   documented observation API (:mod:`rgvlm.rewards.observation_api`, whose documentation the
   prompt ``prompts/vlm_car_program.txt`` includes). The prompt depends only on the sub-task
   text, so the response cache answers repeats for free.
3. Verification, following the paper and its public code. Every program runs in the sandbox
   (:mod:`rgvlm.sandbox`: one child process per program per batch) on

   - every dataset episode whose mission's decomposition contains its sub-task (these values
     are also the labels), the ``kind == "expert"`` ones being the expert trajectories;
   - ``random_trajectories`` uniform-random-action rollouts per mission, in the same layouts
     (env id and seed of the mission's episodes; numpy RNG seeded by ``seed``; only for
     missions with at least ``random_min_subtasks`` sub-tasks, the only ones the rule below
     can reject).

   Progress over a trajectory is ordered and latched, as in the environment: sub-task i
   completes at the first observation, at or after the completion of sub-task i - 1, at
   which its program returns True; observations after the first action only (the
   environment never checks the initial state). Then

   - expert rule: on every expert trajectory (at least ``expert_min_success`` of them) the
     programs must complete all sub-tasks. Where the progress stalls, the stalled sub-task's
     program is blamed; if that program did return True on the trajectory, but only before
     its turn, the previous sub-task's program (which completed too late) is blamed as well;
   - random rule (public code): a mission's program set is rejected when more than
     ``max_random_success`` of its random rollouts complete at least ``random_min_subtasks``
     sub-tasks; each program whose sub-task the random rollouts complete (in order) more
     often than that share is blamed (too permissive). Missions with fewer sub-tasks than
     ``random_min_subtasks`` can never fail this rule;
   - a program that fails in the sandbox (rejected, timeout, memory, exception, bad output,
     crash) or whose answer holds no parseable program fails.

   A failing program is regenerated with the failure fed back in the prompt
   (``prompts/vlm_car_feedback.txt``), up to ``max_regenerations`` times per sub-task. Rules
   are evaluated with the failing programs of the round left out, so the final set is
   exactly the set that was checked. A program that still fails is recorded and its
   sub-task dropped from the missions where the rules still blame it (everywhere, when it
   never ran): it contributes no reward there, and those missions' other sub-tasks keep their
   order without it. One program serves every mission that lists its sub-task text (one
   query), but each mission's set is judged on its own, as the paper judges each task's: a
   mission whose decomposition is wrong loses the sub-task without taking it from the
   missions where the program passes.
4. Dense reward of a transition = the increase of that ordered, latched progress (number of
   leading sub-tasks of the episode's decomposition completed), computed by the accepted
   programs: the oracle's definition with programs in place of the privileged progress.

The scripted annotator answers these queries through :class:`DecompositionTruth` and
:class:`ProgramTruth` (privileged ground truth; it is NOT an LVLM).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.config import Config, param
from rgvlm.data.storage import OfflineDataset
from rgvlm.rewards.base import RewardResult, check_failure_rate
from rgvlm.rewards.observation_api import API_DOC, API_VERSION, COLOUR_NAMES, trajectory_data
from rgvlm.rewards.queries import (
    Answers,
    ParsedAnswer,
    ask_with_reasks,
    episode_pngs,
    load_templates,
    provenance_record,
)
from rgvlm.sandbox import SandboxLimits, run_checks
from rgvlm.vlm.base import FailurePolicy, LVLMClient, LVLMRequest
from rgvlm.vlm.parsing import MAX_ANSWER_CHARS, distinct, json_values
from rgvlm.vlm.scripted import ScriptedNoise

#: What each of the method's prompt files (the registry's ``prompts``, in that order) is for.
TEMPLATE_NAMES = ("decompose", "program", "feedback")
FUNCTION_NAME = "check"
MAX_DECOMPOSITION_SUBTASKS = 12


@dataclass(frozen=True)
class VLMCaRConfig(Config):
    """Queries, verification thresholds and sandbox limits of VLM-CaR (``vlm_car`` in params)."""

    SECTION = "vlm_car"
    expert_min_success: float = param(1.0, low=0.0, high=1.0)  # share of expert trajectories each program set must complete
    max_random_success: float = param(0.10, low=0.0, high=1.0)  # a set is rejected when more random rollouts than this ...
    random_min_subtasks: int = param(2, low=1)  # ... complete at least this many of its sub-tasks
    max_regenerations: int = param(3, low=0)  # per sub-task, after verification failures
    max_reasks: int = param(2, low=0)  # per query, after answers the parser rejects
    expert_trajectories: int = param(0, low=0)  # expert episodes per mission used for verification (0 = all)
    random_trajectories: int = param(4, low=0)  # random-action rollouts per mission
    random_max_steps: int = param(0, low=0)  # steps per random rollout (0 = the environment's time limit)
    seed: int = param(0, low=0)  # of the random rollouts
    tile_size: int = param(16, low=1)  # pixels per cell of the decomposition frames
    decompose_max_new_tokens: int = param(256, low=1)
    program_max_new_tokens: int = param(768, low=1)
    sandbox: SandboxLimits = param(default_factory=SandboxLimits)  # the keys of vlm_car.sandbox
    sandbox_workers: int = param(2, low=1)  # sandbox processes at a time
    sandbox_batch: int = param(20_000, low=1)  # observations per sandbox process at most
    prompt_dir: str = param(str(paths.PROMPTS), internal=True)


def config_from_params(raw: Any) -> VLMCaRConfig:
    """Check the ``vlm_car`` section of params.yaml; a bad key or value raises
    :class:`ParamError` naming ``vlm_car.<key>`` before any query is made."""
    return VLMCaRConfig.from_section(raw)


# -- parsing the LVLM's answers -------------------------------------------------------
_CODE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def normalise_subtask(text: str) -> str:
    """One spelling per sub-task (lower case, single spaces, no final full stop), so that the
    same sub-task of two missions is one program query."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


def _too_long(text: Any) -> ParsedAnswer | None:
    if not isinstance(text, str):
        return ParsedAnswer(None, "unparseable", f"the answer is a {type(text).__name__}, not text")
    if len(text) > MAX_ANSWER_CHARS:
        return ParsedAnswer(None, "too_long", f"{len(text)} characters, more than {MAX_ANSWER_CHARS}")
    return None


def parse_decomposition(text: Any) -> ParsedAnswer:
    """The ordered sub-tasks (``value``, a tuple) of an answer whose JSON value is a list of
    1..12 non-empty strings, or a failure. Like the RG-VLM parser it never guesses and never
    raises: every top-level JSON list or object in the text (fenced or bare) is a candidate;
    candidates that disagree (a fenced example and the answer, a prompt echo) are
    ``ambiguous``; an object holding a list is not the list the prompt asked for (``not_a_list``).
    Other errors: ``unparseable``, ``too_long``, ``empty``, ``too_many``, ``not_strings``."""
    if (failure := _too_long(text)) is not None:
        return failure
    candidates = distinct(json_values(text, "[{"))
    if not candidates:
        return ParsedAnswer(None, "unparseable", "no JSON list in the answer")
    if len(candidates) > 1:
        return ParsedAnswer(None, "ambiguous", f"{len(candidates)} different JSON values in the answer")
    value = candidates[0]
    if not isinstance(value, list):
        return ParsedAnswer(None, "not_a_list", f"the answer is a JSON {type(value).__name__}, not a list")
    if not value:
        return ParsedAnswer(None, "empty", "the JSON list is empty")
    if len(value) > MAX_DECOMPOSITION_SUBTASKS:
        return ParsedAnswer(None, "too_many", f"{len(value)} sub-tasks, more than {MAX_DECOMPOSITION_SUBTASKS}")
    if not all(isinstance(v, str) and v.strip() for v in value):
        return ParsedAnswer(None, "not_strings", "every sub-task must be a non-empty string")
    return ParsedAnswer(tuple(normalise_subtask(v) for v in value))


def parse_program(text: Any) -> ParsedAnswer:
    """The source (``value``) of the answer's Python code block (or of the whole answer when it
    is bare code) if it parses and defines ``check(obs)``, or a failure; never raises. Code
    blocks defining ``check`` that differ are ``ambiguous`` (an example and the answer, or
    two drafts), never picked between. The sandbox's policy check comes later: a program that
    breaks it is a verification failure, fed back. Errors: ``unparseable``, ``ambiguous``,
    ``syntax``, ``no_function``, ``too_long``."""
    if (failure := _too_long(text)) is not None:
        return failure
    blocks = _CODE.findall(text)
    defining = distinct([b.strip("\n") for b in blocks if f"def {FUNCTION_NAME}" in b])
    if len(defining) > 1:
        return ParsedAnswer(None, "ambiguous", f"{len(defining)} different code blocks define {FUNCTION_NAME}")
    if defining:
        source = defining[0]
    elif blocks or f"def {FUNCTION_NAME}" not in text:
        return ParsedAnswer(None, "unparseable", f"no Python code block defining {FUNCTION_NAME}(obs)")
    else:
        source = text
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:  # deep nesting: Recursion/Memory
        return ParsedAnswer(None, "syntax", f"the code does not parse ({getattr(error, 'msg', type(error).__name__)})")
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == FUNCTION_NAME]
    if not defs or len(defs[0].args.args) + len(defs[0].args.posonlyargs) < 1:
        return ParsedAnswer(None, "no_function", f"the code defines no top-level function {FUNCTION_NAME}(obs)")
    return ParsedAnswer(source.strip("\n") + "\n")


# -- the scripted annotator's side (privileged; NOT an LVLM) ------------------------------
# With the noise knob ``misattribution`` the scripted annotator gets VLM-CaR wrong in the ways an
# LVLM does (docs/methods.md, "The scripted annotator's noise, per method"): a sub-task read with
# the wrong object, dropped or out of order in a decomposition, and check programs that test the
# wrong object or colour, the wrong relation, an off-by-one distance, or that can never fire.
# Some of these the method's verification catches (a program that never fires fails the expert
# rule and is regenerated; a misread sub-task's programs fail it until the sub-task is dropped),
# some it cannot (a diagonal "next to" holds on every expert trajectory too).
_OPEN = re.compile(r"^open the (\w+) door$")
_PUT = re.compile(r"^put the (\w+) (\w+) next to the (\w+) (\w+)$")
SWAP_TYPE = {"ball": "key", "key": "ball", "box": "ball"}
#: The kinds of wrong program, per sub-task kind, drawn uniformly.
PROGRAM_MISTAKES = {
    "open": ("wrong_colour", "agent_next_to_door", "never_fires"),
    "put": ("wrong_target_colour", "wrong_moved_colour", "wrong_target_type", "diagonal_counts", "off_by_one",
            "never_fires"),
}
#: The kinds of misread sub-task in a decomposition, drawn uniformly.
DECOMPOSITION_MISTAKES = ("wrong_object", "dropped", "swapped_with_next")


def _other_colour(colour: str, rng: np.random.Generator, avoid: str | None = None) -> str:
    return str(rng.choice([c for c in COLOUR_NAMES if c not in (colour, avoid)]))


def _wrong_objects(words: tuple[str, str, str, str], kind: str, rng: np.random.Generator) -> tuple[str, ...]:
    """(moved colour, moved type, target colour, target type) of a put-next with one part wrong;
    never an object "next to" itself."""
    colour_a, type_a, colour_b, type_b = words
    if kind == "wrong_target_colour":
        colour_b = _other_colour(colour_b, rng, avoid=colour_a if type_a == type_b else None)
    elif kind == "wrong_moved_colour":
        colour_a = _other_colour(colour_a, rng, avoid=colour_b if type_a == type_b else None)
    else:
        type_b = SWAP_TYPE.get(type_b, type_b)
        if (colour_a, type_a) == (colour_b, type_b):
            colour_b = _other_colour(colour_b, rng)
    return colour_a, type_a, colour_b, type_b


def scripted_program(subtask: str, bug_rng: np.random.Generator | None = None) -> str:
    """The check program for one of the suite's sub-task texts, over the observation API.

    With ``bug_rng`` it is a plausible but wrong program, of a kind of :data:`PROGRAM_MISTAKES`
    drawn uniformly: for "open": the door of another colour, "the agent is next to the door", or
    a door state the API never reports ("opened"); for "put next to": another colour of the target
    or of the moved object, the other object type of the target, diagonal cells counted as next
    to, a distance of 2 accepted, or a test that the agent carries the object it placed (never
    true once it is placed). Unknown texts get a program that returns False.
    """
    text = normalise_subtask(subtask)
    head = f"def check(obs):\n    # Sub-task: {text}\n"
    if match := _OPEN.match(text):
        colour = match.group(1)
        kind = str(bug_rng.choice(PROGRAM_MISTAKES["open"])) if bug_rng is not None else None
        if kind == "wrong_colour":
            colour = _other_colour(colour, bug_rng)
        if kind == "agent_next_to_door":
            return head + f"    return obs.adjacent(obs.agent, obs.door({colour!r}))\n"
        if kind == "never_fires":
            return head + (f"    door = obs.door({colour!r})\n"
                           f"    return door is not None and door['state'] == 'opened'\n")
        return head + f"    return obs.is_open({colour!r})\n"
    if match := _PUT.match(text):
        words = match.groups()
        kind = str(bug_rng.choice(PROGRAM_MISTAKES["put"])) if bug_rng is not None else None
        if kind in ("wrong_target_colour", "wrong_moved_colour", "wrong_target_type"):
            words = _wrong_objects(words, kind, bug_rng)
        colour_a, type_a, colour_b, type_b = words
        find = (f"    moved = obs.find({type_a!r}, {colour_a!r})  # None while the agent carries it\n"
                f"    target = obs.find({type_b!r}, {colour_b!r})\n")
        if kind in ("diagonal_counts", "off_by_one"):
            distance = ("max(abs(moved['x'] - target['x']), abs(moved['y'] - target['y'])) == 1"
                        if kind == "diagonal_counts" else "abs(moved['x'] - target['x']) + abs(moved['y'] - target['y']) <= 2")
            return head + find + ("    if moved is None or target is None:\n        return False\n"
                                  f"    return {distance}\n")
        if kind == "never_fires":
            return head + find + f"    return obs.carrying_is({type_a!r}, {colour_a!r}) and obs.adjacent(moved, target)\n"
        return head + find + "    return obs.adjacent(moved, target)\n"
    return f"def check(obs):\n    # Sub-task not understood: {text}\n    return False\n"


def misread_subtask(subtask: str, rng: np.random.Generator) -> str:
    """The sub-task text with the wrong object: another door colour, or one part of a put-next
    (the target's or the moved object's colour, the target's type) wrong. Unknown texts stay."""
    text = normalise_subtask(subtask)
    if match := _OPEN.match(text):
        return f"open the {_other_colour(match.group(1), rng)} door"
    if match := _PUT.match(text):
        kind = str(rng.choice(("wrong_target_colour", "wrong_moved_colour", "wrong_target_type")))
        colour_a, type_a, colour_b, type_b = _wrong_objects(match.groups(), kind, rng)
        return f"put the {colour_a} {type_a} next to the {colour_b} {type_b}"
    return text


def misread_decomposition(subtasks: tuple[str, ...], rng: np.random.Generator, rate: float) -> list[str]:
    """The decomposition as an LVLM may answer it: each sub-task, with probability ``rate``, is
    misread in a way of :data:`DECOMPOSITION_MISTAKES` drawn uniformly -- with the wrong object
    (:func:`misread_subtask`), dropped, or swapped with the next one (the last one: the wrong
    object instead)."""
    out = list(subtasks)
    i = 0
    while i < len(out):
        if rng.random() < rate:
            kind = str(rng.choice(DECOMPOSITION_MISTAKES))
            if kind == "dropped":
                del out[i]
                continue
            if kind == "swapped_with_next" and i + 1 < len(out):
                out[i], out[i + 1] = out[i + 1], out[i]
                i += 2  # the pair is read; the moved sub-task is not misread twice
                continue
            out[i] = misread_subtask(out[i], rng)
        i += 1
    return out


@dataclass(frozen=True)
class DecompositionTruth:
    """Privileged answer to a decomposition query: the mission's true sub-tasks.

    Noise: with ``malformed_rate`` the answer is malformed (prose without a list, a JSON
    object instead of a list, or an empty list), which the parser rejects and re-asks;
    otherwise each sub-task is misread with probability ``misattribution``
    (:func:`misread_decomposition`: the wrong object, dropped, or out of order), which the
    programs' verification may or may not catch. ``score_sd`` does not apply.
    """

    subtasks: tuple[str, ...]

    def scripted_answer(self, rng: np.random.Generator, noise: ScriptedNoise) -> str:
        if rng.random() < noise.malformed_rate:
            kind = int(rng.integers(3))
            if kind == 0:
                return "The agent should work through the task step by step, one object at a time."
            if kind == 1:
                return json.dumps({"subtasks": list(self.subtasks)})
            return "[]"
        return json.dumps(misread_decomposition(self.subtasks, rng, noise.misattribution))


@dataclass(frozen=True)
class ProgramTruth:
    """Privileged answer to a program query: the correct check program of the sub-task.

    Noise: with ``malformed_rate`` the answer holds no usable code (prose, or a code block
    with a syntax error), which the parser rejects and re-asks; otherwise, with
    ``misattribution``, the program is wrong in one of the ways of :data:`PROGRAM_MISTAKES`
    (:func:`scripted_program` with a bug), which verification may catch. Regeneration
    prompts differ (they carry the feedback), so every regeneration draws afresh.
    ``score_sd`` does not apply.
    """

    subtask: str

    def scripted_answer(self, rng: np.random.Generator, noise: ScriptedNoise) -> str:
        if rng.random() < noise.malformed_rate:
            if rng.random() < 0.5:
                return "The sub-task is complete when the right objects are in the right places."
            return "```python\ndef check(obs)\n    return obs.carrying is None\n```"
        buggy = rng.random() < noise.misattribution
        return f"```python\n{scripted_program(self.subtask, rng if buggy else None)}```"


# -- helpers -----------------------------------------------------------------------------
def ordered_completion(holds: np.ndarray) -> list[int]:
    """Completion indices of the leading sub-tasks, ordered and latched: sub-task i completes
    at the first index >= the completion of sub-task i - 1 at which ``holds[i]`` is True.
    ``holds`` bool [num_subtasks, T]; the list is as long as the number completed."""
    times: list[int] = []
    start = 0
    for row in holds:
        hits = np.flatnonzero(row[start:])
        if hits.size == 0:
            break
        start += int(hits[0])
        times.append(start)
    return times


def progress_curve(holds: np.ndarray) -> np.ndarray:
    """Sub-tasks completed up to and including each index, int64 [T]."""
    times = ordered_completion(holds)
    return np.searchsorted(np.asarray(times, dtype=np.int64), np.arange(holds.shape[1]), side="right")


@dataclass
class _Trajectory:
    ids: np.ndarray  # int64 [T + 1]: observation ids in the store
    mission: str
    kind: str  # expert / noisy / partial (dataset) or random
    episode: int | None  # dataset episode index, or None for a random rollout


@dataclass
class _Evaluation:
    ok: bool
    ids: np.ndarray | None = None  # sorted store ids it was evaluated on
    values: np.ndarray | None = None  # bool, aligned with ids
    error_kind: str | None = None
    message: str = ""

    def holds(self, ids: np.ndarray) -> np.ndarray:
        if not self.ok:
            return np.zeros(ids.shape, dtype=bool)
        return self.values[np.searchsorted(self.ids, ids)]


class _Store:
    """Every distinct observation (as plain API data) once, with an integer id.

    Random rollouts revisit the same states again and again, and the objects of a layout
    rarely move while the agent does: storing each distinct observation once, and each
    distinct object list once, keeps memory and sandbox work proportional to what differs.
    """

    def __init__(self) -> None:
        self.index: dict[tuple, int] = {}
        self.data: list[tuple] = []
        self.object_lists: dict[tuple, tuple] = {}

    def add(self, items: list[tuple]) -> np.ndarray:
        ids = np.empty(len(items), dtype=np.int64)
        for i, item in enumerate(items):
            j = self.index.get(item)
            if j is None:
                objects = self.object_lists.setdefault(item[0], item[0])
                item = (objects, *item[1:])
                j = self.index[item] = len(self.data)
                self.data.append(item)
            ids[i] = j
        return ids


def random_rollout(env_id: str, seed: int, env_kwargs: dict, rng: np.random.Generator,
                   max_steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(grids, carries) of one uniform-random-action rollout from the layout (env id, seed),
    until the environment ends it (time limit or success) or ``max_steps`` (0: no cap)."""
    from rgvlm.envs import NUM_ACTIONS, encode_observation, make_env, reset_quietly

    env = make_env(env_id, **env_kwargs)
    # Two shortcuts that change no state the rollout records, and cut a step's cost by ~3x:
    # the rollout reads the full symbolic state (encode_observation), never the agent's partial
    # view, so that is not computed; and BabyAI's re-matching of object descriptions after every
    # drop is skipped: the suite's descriptions name a unique (type, colour), so the matched
    # objects never change (the environment still ends the rollout on success).
    env.unwrapped.agent_view_obs = False
    env.unwrapped.update_objs_poss = lambda: None
    reset_quietly(env, seed)
    grid, carry = encode_observation(env)
    grids, carries = [grid], [carry]
    steps = 0
    while True:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(NUM_ACTIONS)))
        grid, carry = encode_observation(env)
        grids.append(grid)
        carries.append(carry)
        steps += 1
        if terminated or truncated or (max_steps and steps >= max_steps):
            break
    env.close()
    return np.stack(grids), np.stack(carries)


def _rollout_job(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    env_id, seed, env_kwargs, rng_seed, max_steps = job
    return random_rollout(env_id, seed, env_kwargs, np.random.default_rng(list(rng_seed)), max_steps)


DECOMPOSE_NOTE = "\n\nYour previous answer could not be used ({detail}). Answer with a JSON list of strings only."
PROGRAM_NOTE = ("\n\nYour previous answer could not be used ({detail}). Answer with one Python code block "
                "defining check(obs) only.")


def _representative(dataset: OfflineDataset, mission: str) -> int:
    """The episode whose first and last frames illustrate a mission: a successful expert
    episode if there is one (its last frame shows the goal reached), else a successful one."""
    candidates = [i for i, e in enumerate(dataset.episodes) if e["mission"] == mission]
    for wanted in (lambda e: e["kind"] == "expert" and e["success"], lambda e: e["success"]):
        for i in candidates:
            if wanted(dataset.episodes[i]):
                return i
    return candidates[0]


def _frames_text(needs_images: bool) -> str:
    if needs_images:
        return ("two top-down frames of a grid world: the state at the start of an episode and the state "
                "at its end")
    return "no frames (text only)"


def _attempts_text(attempts: list[dict]) -> str:
    """Every failed attempt so far, with its failure: each regeneration prompt differs from the
    last (a deterministic model, or the cache, would otherwise repeat the same answer) and the
    model sees the whole history."""
    blocks = []
    for number, attempt in enumerate(attempts, start=1):
        source = (attempt["source"] or "(no usable program)").rstrip("\n")
        blocks.append(f"Attempt {number}:\n```python\n{source}\n```\nFailure: {attempt['failure']['reason']}\n")
    return "\n".join(blocks)


# -- 1. decomposition ---------------------------------------------------------------------
def decompose_missions(dataset: OfflineDataset, client: LVLMClient, config: VLMCaRConfig, template: str,
                       needs_images: bool) -> tuple[dict[str, tuple[str, ...] | None], Answers]:
    """Stage 1: the ordered sub-tasks of each distinct mission (None where every answer failed),
    and the answers' counts."""
    episodes = dataset.episodes
    requests = []
    for mission in dataset.missions:
        index = _representative(dataset, mission)
        shown: tuple[bytes, ...] = ()
        if needs_images:  # the first and the last state
            shown = tuple(episode_pngs(dataset, index, [0, episodes[index]["length"]], config.tile_size))
        requests.append(LVLMRequest(prompt=template.format(frames=_frames_text(needs_images), goal=mission),
                                    images=shown, max_new_tokens=config.decompose_max_new_tokens,
                                    annotation=DecompositionTruth(tuple(episodes[index]["subtasks"]))))
    answers = ask_with_reasks(client, requests, lambda _, text: parse_decomposition(text),
                              lambda _, detail: DECOMPOSE_NOTE.format(detail=detail), config.max_reasks)
    return dict(zip(dataset.missions, answers.values, strict=True)), answers


# -- 2. verification ----------------------------------------------------------------------
class ProgramVerifier:
    """Runs check programs on the verification trajectories and applies the expert and random
    rules (module docstring, step 3).

    The trajectories are every dataset episode of a decomposed mission and the random rollouts
    of the missions the random rule can reject; each observation is stored once
    (:class:`_Store`). A program's values are computed once per (sub-task, source) and kept:
    the rules, and the rewards after them, read them again and again. :meth:`evaluate` runs in
    ``sandbox_workers`` threads at once, so its counters are updated under a lock.
    """

    def __init__(self, dataset: OfflineDataset, decomposition: dict[str, tuple[str, ...] | None],
                 config: VLMCaRConfig) -> None:
        self.config = config
        self.store = _Store()
        self.trajectories: list[_Trajectory] = []
        self._add_dataset_episodes(dataset, decomposition)
        rollout_started = time.perf_counter()
        self.random_steps = self._add_random_rollouts(dataset, decomposition)
        self.rollout_s = time.perf_counter() - rollout_started
        self.uses: dict[str, list[int]] = {}  # sub-task -> trajectories whose decomposition has it
        self.experts_by_mission: dict[str, list[int]] = {}  # the expert trajectories the expert rule reads
        self.randoms_by_mission: dict[str, list[int]] = {}
        for t, trajectory in enumerate(self.trajectories):
            for s in decomposition[trajectory.mission]:
                self.uses.setdefault(s, []).append(t)
            if trajectory.kind == "expert":
                chosen = self.experts_by_mission.setdefault(trajectory.mission, [])
                if not config.expert_trajectories or len(chosen) < config.expert_trajectories:
                    chosen.append(t)
            elif trajectory.kind == "random":
                self.randoms_by_mission.setdefault(trajectory.mission, []).append(t)
        self.evaluations: dict[tuple[str, str], _Evaluation] = {}
        self.sandbox_failures: Counter[str] = Counter()
        self.sandbox_calls = 0
        self.evaluated = 0
        self._lock = threading.Lock()

    def _add_dataset_episodes(self, dataset: OfflineDataset, decomposition: dict[str, tuple[str, ...] | None]) -> None:
        """Every dataset episode of a decomposed mission (their values are also the labels)."""
        for index, e in enumerate(dataset.episodes):
            if decomposition[e["mission"]] is None:
                continue
            rows = slice(e["obs_start"], e["obs_start"] + e["length"] + 1)
            ids = self.store.add(trajectory_data(dataset.obs_grid[rows], dataset.obs_carry[rows]))
            self.trajectories.append(_Trajectory(ids, e["mission"], e["kind"], index))

    def _add_random_rollouts(self, dataset: OfflineDataset, decomposition: dict[str, tuple[str, ...] | None]) -> int:
        """``random_trajectories`` random-action rollouts per mission the random rule can reject,
        in the layouts of the mission's episodes; returns the steps taken."""
        config, episodes = self.config, dataset.episodes
        env_kwargs = dict(dataset.manifest.get("env") or {})
        jobs = []
        for mission in dataset.missions:
            if decomposition[mission] is None or len(decomposition[mission]) < config.random_min_subtasks:
                continue
            layouts = list(dict.fromkeys((e["env_id"], e["seed"], e["k"]) for e in episodes if e["mission"] == mission))
            for i in range(config.random_trajectories):
                env_id, seed, k = layouts[i % len(layouts)]
                jobs.append((mission, (env_id, seed, env_kwargs, (config.seed, seed, k, i), config.random_max_steps)))
        steps = 0
        for mission, job in jobs:
            grids, carries = _rollout_job(job)
            steps += len(grids) - 1
            ids = self.store.add(trajectory_data(grids, carries))
            self.trajectories.append(_Trajectory(ids, mission, "random", None))
        return steps

    def evaluate(self, subtask: str, source: str) -> _Evaluation:
        """The program's values on every observation of the trajectories that need ``subtask``."""
        key = (subtask, source)
        if key in self.evaluations:
            return self.evaluations[key]
        uses = self.uses.get(subtask, [])
        ids = np.unique(np.concatenate([self.trajectories[t].ids for t in uses])) if uses else np.zeros(0, np.int64)
        values = np.zeros(ids.shape, dtype=bool)
        outcome = _Evaluation(True, ids, values)
        batch = self.config.sandbox_batch
        for start in range(0, max(len(ids), 1), batch):
            chunk = ids[start : start + batch]
            result = run_checks(source, FUNCTION_NAME, [self.store.data[i] for i in chunk], self.config.sandbox)
            with self._lock:
                self.sandbox_calls += 1
                self.evaluated += len(chunk)
                if not result.ok:
                    self.sandbox_failures[result.error_kind] += 1
            if not result.ok:
                outcome = _Evaluation(False, error_kind=result.error_kind, message=result.message)
                break
            values[start : start + len(chunk)] = result.values
        with self._lock:
            self.evaluations[key] = outcome
        return outcome

    def evaluate_all(self, sources: dict[str, str | None]) -> dict[str, _Evaluation | None]:
        """:meth:`evaluate` of each sub-task's program, ``sandbox_workers`` at a time (None: no program)."""
        with ThreadPoolExecutor(max_workers=self.config.sandbox_workers) as pool:
            evaluated = pool.map(lambda s: self.evaluate(s, sources[s]) if sources[s] else None, sources)
            return dict(zip(sources, evaluated, strict=True))

    def holds(self, sequence: list[str], sources: dict[str, str | None], ids: np.ndarray) -> np.ndarray:
        """bool [len(sequence), len(ids) - 1]: each program's values on the observations after
        the first action of a trajectory (the environment never checks the initial state)."""
        if not sequence:
            return np.zeros((0, len(ids) - 1), dtype=bool)
        return np.stack([self.evaluations[(s, sources[s])].holds(ids[1:]) for s in sequence])

    def rule_failures(self, active: dict[str, list[str]], sources: dict[str, str | None],
                      reasons: dict[str, tuple[str, str]]) -> dict[str, set[str]]:
        """Add to ``reasons`` (sub-task -> (category, feedback text)) the programs the expert
        and random rules blame, for the missions' ``active`` sub-tasks, and return where each
        was blamed (sub-task -> missions). Sub-tasks already in ``reasons`` (failing in the
        sandbox) are left out of the sets: they are regenerated anyway."""
        config = self.config
        expert_runs: Counter[str] = Counter()
        expert_fails: dict[str, list[str]] = {}
        blamed_in: dict[str, set[str]] = {}
        for mission, chosen in self.experts_by_mission.items():
            sequence = [s for s in active[mission] if s not in reasons]
            for t in chosen:
                holds = self.holds(sequence, sources, self.trajectories[t].ids)
                done = len(ordered_completion(holds))
                for s in sequence[: done + 1]:
                    expert_runs[s] += 1
                if done < len(sequence):
                    episode = self.trajectories[t].episode
                    stalled = sequence[done]
                    expert_fails.setdefault(stalled, []).append(
                        f"on the expert trajectory of episode {episode} ('{mission}') it never returned True "
                        "after the previous sub-tasks were complete")
                    blamed_in.setdefault(stalled, set()).add(mission)
                    if done > 0 and holds[done].any():
                        expert_fails.setdefault(sequence[done - 1], []).append(
                            f"on the expert trajectory of episode {episode} ('{mission}') it returned True only "
                            f"after the next sub-task ('{stalled}') had already been done")
                        blamed_in.setdefault(sequence[done - 1], set()).add(mission)
        for s, failures in expert_fails.items():
            success = 1.0 - len(failures) / max(expert_runs[s], 1)
            if success < config.expert_min_success and s not in reasons:
                reasons[s] = ("expert", f"{failures[0]} (expert trajectories completed: {success:.0%}, "
                                        f"required: {config.expert_min_success:.0%})")
        blamed_in = {s: missions for s, missions in blamed_in.items() if reasons.get(s, ("",))[0] == "expert"}

        # Random rule (public code): too many random rollouts complete random_min_subtasks sub-tasks.
        for mission, chosen in self.randoms_by_mission.items():
            sequence = [s for s in active[mission] if s not in reasons]
            if len(sequence) < config.random_min_subtasks or not chosen:
                continue
            reached = np.array([len(ordered_completion(self.holds(sequence, sources, self.trajectories[t].ids)))
                                for t in chosen])
            share = float(np.mean(reached >= config.random_min_subtasks))
            if share <= config.max_random_success:
                continue
            for position, s in enumerate(sequence):
                own = float(np.mean(reached > position))
                if own > config.max_random_success and (s not in reasons or reasons[s][0] == "random"):
                    blamed_in.setdefault(s, set()).add(mission)
                if own > config.max_random_success and s not in reasons:
                    reasons[s] = ("random", (
                        f"with the programs of the other sub-tasks, {share:.0%} of random-action trajectories complete "
                        f"at least {config.random_min_subtasks} sub-tasks of '{mission}' (allowed: "
                        f"{config.max_random_success:.0%}); this sub-task is complete on {own:.0%} of them, so "
                        "the program is probably too permissive"))
        return blamed_in


@dataclass
class ProgramSearch:
    """The outcome of :func:`write_programs`."""

    records: dict[str, dict[str, Any]]  # per sub-task: status, final source, every attempt with its failure
    sources: dict[str, str | None]  # the latest program of each sub-task (None: no parseable answer)
    # Sub-task -> the missions where its programs failed for good: it gives no reward there. A
    # sub-task text is shared by the missions that list it (one program query), but verification
    # judges each mission's set, as the paper verifies each task's: a mission whose decomposition
    # is wrong loses the sub-task without taking it from the missions where its program passes.
    dropped_in: dict[str, set[str]]
    listed_in: dict[str, set[str]]  # sub-task -> the missions whose decomposition lists it
    asks: int = 0  # program queries, re-asks not counted
    queries: int = 0  # program queries, re-asks counted
    reasks: int = 0
    failed: int = 0  # program queries with no parseable answer
    errors: Counter[str] = field(default_factory=Counter)  # rejected program answers by reason
    regenerations: int = 0

    @property
    def dropped(self) -> set[str]:
        """Sub-tasks whose programs failed for good in every mission that lists them."""
        return {s for s, missions in self.dropped_in.items() if missions >= self.listed_in[s]}

    def accepted(self) -> dict[str, str]:
        """Sub-task -> source of every program accepted in at least one mission."""
        dropped = self.dropped
        return {s: source for s, source in self.sources.items() if s not in dropped}

    def active(self, decomposition: dict[str, tuple[str, ...] | None]) -> dict[str, list[str]]:
        """Mission -> its sub-tasks that still have a program there, in order."""
        return {m: [s for s in d if m not in self.dropped_in.get(s, ())] for m, d in decomposition.items() if d}


def write_programs(client: LVLMClient, config: VLMCaRConfig, templates: dict[str, str], subtasks: list[str],
                   decomposition: dict[str, tuple[str, ...] | None], verifier: ProgramVerifier) -> ProgramSearch:
    """Stage 2 with verification: a program per sub-task, regenerated with the failure fed back
    until it passes or its regenerations run out (then its sub-task is dropped from the missions
    where it still fails)."""
    base_prompts = {s: templates["program"].format(api=API_DOC, subtask=s) for s in subtasks}
    listed_in: dict[str, set[str]] = {s: set() for s in subtasks}
    for mission, d in decomposition.items():
        for s in d or ():
            listed_in[s].add(mission)
    search = ProgramSearch({s: {"status": None, "source": None, "attempts": []} for s in subtasks}, {}, {}, listed_in)
    feedback: dict[str, str] = {}  # what to append to the next query of a sub-task
    to_ask = list(subtasks)
    recheck = False
    # Each round asks for the programs that need one (if any), then verifies every set again:
    # a dropped sub-task changes the sets it was part of, so they are re-verified even when
    # nothing new was asked. Every round either spends a regeneration or drops a sub-task from
    # at least one mission.
    while to_ask or recheck:
        outcomes: dict[str, _Evaluation | None] = {}
        if to_ask:
            requests = [LVLMRequest(prompt=base_prompts[s] + feedback.get(s, ""), images=(),
                                    max_new_tokens=config.program_max_new_tokens, annotation=ProgramTruth(s))
                        for s in to_ask]
            answers = ask_with_reasks(client, requests, lambda _, text: parse_program(text),
                                      lambda _, detail: PROGRAM_NOTE.format(detail=detail), config.max_reasks)
            search.errors.update(answers.errors)
            search.asks += len(to_ask)
            search.queries += answers.queries
            search.reasks += answers.reasks
            search.failed += answers.failed
            search.sources.update(zip(to_ask, answers.values, strict=True))
            outcomes = verifier.evaluate_all({s: search.sources[s] for s in to_ask})
        reasons: dict[str, tuple[str, str]] = {}  # sub-task -> (category, feedback text)
        for s in to_ask:
            outcome = outcomes[s]
            if outcome is None:
                reasons[s] = ("unparseable", "the answer held no usable program")
            elif not outcome.ok:
                reasons[s] = (f"sandbox_{outcome.error_kind}",
                              f"it failed when run ({outcome.error_kind}): {outcome.message}")
        blamed_in = verifier.rule_failures(search.active(decomposition), search.sources, reasons)

        to_ask, recheck = [], False
        dropped = search.dropped
        for s in subtasks:
            if s in dropped:
                continue
            record = search.records[s]
            if s in outcomes:  # a new program this round
                record["attempts"].append({"source": search.sources[s], "failure": None})
            if s not in reasons:
                continue
            category, text = reasons[s]
            record["attempts"][-1]["failure"] = {"category": category, "reason": text}
            if len(record["attempts"]) <= config.max_regenerations:
                feedback[s] = templates["feedback"].format(attempts=_attempts_text(record["attempts"]))
                to_ask.append(s)
                search.regenerations += 1
            else:  # where the rules blamed it; a program that never ran is dropped everywhere
                search.dropped_in.setdefault(s, set()).update(blamed_in.get(s, listed_in[s]))
                recheck = True
    dropped = search.dropped
    for s in subtasks:
        search.records[s]["status"] = "failed" if s in dropped else "accepted"
        search.records[s]["source"] = None if s in dropped else search.sources[s]
        search.records[s]["dropped_in_missions"] = len(search.dropped_in.get(s, ()))
    return search


# -- 3. reward ----------------------------------------------------------------------------
def progress_rewards(dataset: OfflineDataset, verifier: ProgramVerifier, active: dict[str, list[str]],
                     accepted: dict[str, str]) -> np.ndarray:
    """Dense reward: the increase of ordered, latched progress by the ``accepted`` programs on
    each dataset episode, over its mission's ``active`` sub-tasks (those dropped there are left
    out, the others keep their order)."""
    rewards = np.zeros(dataset.num_transitions, dtype=np.float32)
    for trajectory in verifier.trajectories:
        if trajectory.episode is None:
            continue
        sequence = active.get(trajectory.mission, [])
        if not sequence:
            continue
        after = progress_curve(verifier.holds(sequence, accepted, trajectory.ids))
        start = dataset.episodes[trajectory.episode]["step_start"]
        rewards[start : start + len(after)] = np.diff(after, prepend=0)
    return rewards


# -- the method ---------------------------------------------------------------------------
def label_vlm_car(
    dataset: OfflineDataset,
    client: LVLMClient,
    config: VLMCaRConfig = VLMCaRConfig(),
    needs_images: bool = True,
    failure_policy: FailurePolicy | None = None,
) -> tuple[RewardResult, dict]:
    """Label every transition with VLM-CaR (see the module docstring).

    Returns the reward set and the statistics. ``stats["programs"]`` (per sub-task: status,
    final source, every attempt with its failure) and ``stats["decompositions"]`` (per
    mission) are the programs' record, kept out of ``result.cost``; pop them before using
    the rest as a cost record.
    """
    started = time.perf_counter()
    templates = dict(zip(TEMPLATE_NAMES, load_templates("vlm_car", config.prompt_dir), strict=True))
    missions = dataset.missions
    decomposition, decompositions = decompose_missions(dataset, client, config, templates["decompose"], needs_images)
    subtasks = list(dict.fromkeys(s for d in decomposition.values() if d for s in d))
    verifier = ProgramVerifier(dataset, decomposition, config)
    programs = write_programs(client, config, templates, subtasks, decomposition, verifier)
    # Answers that never parsed; programs that parsed but failed verification are the method's
    # own filtering (regenerated, then dropped), recorded in "program_failures", not counted here.
    check_failure_rate("vlm_car", decompositions.failed + programs.failed, len(missions) + programs.asks,
                       decompositions.errors + programs.errors, failure_policy, "decomposition and program queries")
    accepted = programs.accepted()
    rewards = progress_rewards(dataset, verifier, programs.active(decomposition), accepted)

    failure_categories = Counter(a["failure"]["category"] for r in programs.records.values() for a in r["attempts"]
                                 if a["failure"])
    # Against the benchmark's true sub-tasks (privileged; absent from a dataset that lacks them).
    truth = {e["mission"]: tuple(e["subtasks"]) for e in dataset.episodes if e.get("subtasks")}
    stats = {
        "missions": len(missions),
        "decomposition_queries": decompositions.queries,
        "decomposition_reasks": decompositions.reasks,
        "failed_decompositions": decompositions.failed,
        "decompositions_misread": (sum(tuple(decomposition[m] or ()) != truth[m] for m in missions)
                                   if set(truth) >= set(missions) else None),
        "decomposition_errors": dict(sorted(decompositions.errors.items())),
        "subtasks": len(subtasks),
        "program_queries": programs.queries,
        "program_reasks": programs.reasks,
        "failed_program_answers": programs.failed,  # program queries with no parseable answer
        "program_errors": dict(sorted(programs.errors.items())),
        "regenerations": programs.regenerations,
        "accepted_programs": len(accepted),
        "failed_programs": len(subtasks) - len(accepted),  # sub-tasks dropped in every mission that lists them
        "subtask_drops": sum(len(m) for m in programs.dropped_in.values()),  # (mission, sub-task) pairs dropped
        "program_failures": dict(sorted(failure_categories.items())),
        "sandbox_calls": verifier.sandbox_calls,
        "sandbox_failures": dict(sorted(verifier.sandbox_failures.items())),
        "evaluated_observations": verifier.evaluated,
        "distinct_observations": len(verifier.store.data),
        "random_rollouts": sum(len(v) for v in verifier.randoms_by_mission.values()),
        "random_steps": verifier.random_steps,
        "random_rollout_s": round(verifier.rollout_s, 3),
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    provenance = provenance_record(
        "vlm_car", "LVLM sub-task decomposition and generated check programs (code as reward), verified on "
                   "expert and random trajectories, run in a sandbox", config, client,
        observation_api_version=API_VERSION,
        prompts_sha256={name: hashlib.sha256(text.encode()).hexdigest()[:16] for name, text in templates.items()})
    result = RewardResult("vlm_car", rewards, provenance=provenance, cost=dict(stats))
    stats["programs"] = programs.records
    stats["decompositions"] = {m: list(d) if d else None for m, d in decomposition.items()}
    return result, stats


def label(dataset: OfflineDataset, clients: tuple[LVLMClient, LVLMClient], config: VLMCaRConfig,
          out_dir: Path, failure_policy: FailurePolicy | None = None) -> tuple[RewardResult, dict]:
    """The labelling stage's entry (:mod:`rgvlm.rewards.registry`): one model (the stage-1 client)
    writes decompositions and programs; their record goes to ``out_dir/programs.json``."""
    client = clients[0]
    result, stats = label_vlm_car(dataset, client, config, needs_images=client.backend != "scripted",
                                  failure_policy=failure_policy)
    write_json_atomic(out_dir / "programs.json",
                      {"programs": stats.pop("programs"), "decompositions": stats.pop("decompositions")})
    return result, stats


def diagnostic(dataset: OfflineDataset, result: RewardResult, out_dir: Path) -> dict[str, Any]:
    """Programs that failed verification for good (their sub-tasks give no reward), with the last reason."""
    programs = json.loads((out_dir / "programs.json").read_text())["programs"]
    return {subtask: record["attempts"][-1]["failure"] for subtask, record in programs.items()
            if record["status"] == "failed"}
