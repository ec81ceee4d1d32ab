"""Where does a policy stop? Per-sub-task diagnosis of evaluation episodes, by replay.

An evaluation record with its actions (``rollout(..., record_actions=True)``) is replayed step
by step (replay is deterministic), reading the level's own verifier, to say for each sub-task
of the mission whether the policy *reached* it (every earlier one done), *completed* it, and,
for the sub-task where the episode ended (the stall), what the policy did once that sub-task
became current:

- ``started``: it acted on the right object: picked up the object a put-next clause moves, or
  toggled the door an open clause names;
- ``wrong_object``: it picked up an object the current clause does not move (doors toggled on
  the way are navigation, not mistakes, so toggles of other doors do not count);
- ``undid``: the effect of a sub-task already completed stopped holding (a placed object picked
  up again, an opened door closed) -- completion is latched, so this costs nothing by itself,
  but it shows a policy that does not know which clause is current.

These read the level's privileged state, as a diagnostic after the fact; nothing here is a
learner input.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from minigrid.envs.babyai.core.verifier import OpenInstr

from rgvlm.envs import env_id_for, make_env, reset_quietly
from rgvlm.envs.tracking import parse_mission
from rgvlm.params import EnvConfig

PICKUP, TOGGLE = 3, 5  # the suite's action indices (rgvlm.envs.suite.ACTION_NAMES)


def subtask_kind(leaf) -> str:
    """``"open"`` (open the X door) or ``"put"`` (put the X next to the Y)."""
    return "open" if isinstance(leaf, OpenInstr) else "put"


def _named(leaf) -> list:
    """The world objects a clause acts on: the door to open, or the object to move."""
    return list(leaf.desc.obj_set) if isinstance(leaf, OpenInstr) else list(leaf.desc_move.obj_set)


def diagnose_episode(record: dict, env_config: EnvConfig) -> dict:
    """Replay one evaluation record (needs ``k``, ``seed`` and ``actions``) and return its
    per-sub-task facts: ``kinds``, ``progress``, ``reached``/``completed`` per position, and
    the stall's ``started`` / ``wrong_object`` / ``undid`` flags (``None`` when it succeeded)."""
    if "actions" not in record:
        raise ValueError("diagnose_episode needs the record's actions: roll out with record_actions=True")
    env = make_env(env_id_for(int(record["k"])), **env_config.kwargs())
    reset_quietly(env, int(record["seed"]))
    u = env.unwrapped
    instrs = u.instrs
    leaves = list(instrs.leaves)
    started = wrong = undid = False
    # The flags describe the clause current at the end (each new current clause starts them afresh).
    for action in record["actions"]:
        current = instrs.progress
        carried_before = u.carrying
        front = u.grid.get(*u.front_pos)
        _, _, terminated, truncated, _ = env.step(int(action))
        if instrs.progress != current:  # a new clause became current: its story starts afresh
            started = wrong = False
        elif current < len(leaves):
            leaf = leaves[current]
            acted_on = None
            if action == PICKUP and carried_before is None and u.carrying is not None:
                acted_on = u.carrying
            elif action == TOGGLE and front is not None and front.type == "door":
                acted_on = front
            if acted_on is not None:
                if any(acted_on is obj for obj in _named(leaf)):
                    started = True
                elif action == PICKUP:
                    wrong = True
        if any(not instrs.leaf_holds(leaves[j]) for j in range(instrs.progress)):
            undid = True
        if terminated or truncated:
            break
    progress = int(instrs.progress)
    k = len(leaves)
    env.close()
    return {
        "kinds": [subtask_kind(leaf) for leaf in leaves], "progress": progress,
        "stall_position": None if progress == k else progress + 1,
        "stall_kind": None if progress == k else subtask_kind(leaves[progress]),
        "started": None if progress == k else started,
        "wrong_object": None if progress == k else wrong,
        "undid": undid,
    }


def subtask_outcomes(records: Iterable[dict], keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per (record, sub-task position) from what every evaluation record holds (its
    ``mission`` and ``progress``; no replay): ``position`` (1-based), ``kind`` (open / put, read
    from the clause's words), ``reached`` (every earlier sub-task done) and ``completed``;
    ``keys`` are record fields copied to every row."""
    rows = []
    for record in records:
        for i, clause in enumerate(parse_mission(record["mission"])):
            rows.append({**{key: record[key] for key in keys}, "k": int(record["k"]), "seed": int(record["seed"]),
                         "position": i + 1, "kind": clause.verb, "reached": record["progress"] >= i,
                         "completed": record["progress"] > i})
    return pd.DataFrame(rows)


def diagnose(records: Iterable[dict], env_config: EnvConfig, keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per (record, sub-task position): ``position`` (1-based), ``kind``, ``reached``,
    ``completed``, and the episode's stall flags; ``keys`` are record fields copied to every row
    (e.g. ``("reward_set", "run_seed", "policy")``)."""
    rows = []
    for record in records:
        facts = diagnose_episode(record, env_config)
        for i, kind in enumerate(facts["kinds"]):
            rows.append({
                **{key: record[key] for key in keys}, "k": int(record["k"]), "seed": int(record["seed"]),
                "position": i + 1, "kind": kind, "reached": facts["progress"] >= i,
                "completed": facts["progress"] > i, "stalled_here": facts["stall_position"] == i + 1,
                "started": facts["started"], "wrong_object": facts["wrong_object"], "undid": facts["undid"],
            })
    return pd.DataFrame(rows)


def chaining_tables(frame: pd.DataFrame, by: list[str]) -> dict[str, pd.DataFrame]:
    """The diagnosis tables of :func:`diagnose`'s rows (or :func:`subtask_outcomes`', which give
    the first two), grouped by ``by`` (e.g. the reward set):

    - ``by_kind``: success of a sub-task once reached, per kind (open / put);
    - ``by_position``: success once reached, per position in the sequence (1st .. 6th), and how
      many episodes reached it;
    - ``stalls``: of the episodes that stopped on a clause, the share that had started it (acted
      on its object), acted on a wrong object, or undid a finished clause, per stalled kind.
    """
    reached = frame[frame["reached"]]
    by_kind = reached.groupby([*by, "kind"])["completed"].agg(["mean", "size"]).rename(
        columns={"mean": "success_when_reached", "size": "reached"}).reset_index()
    by_position = reached.groupby([*by, "position"])["completed"].agg(["mean", "size"]).rename(
        columns={"mean": "success_when_reached", "size": "reached"}).reset_index()
    if "stalled_here" not in frame:
        return {"by_kind": by_kind, "by_position": by_position}
    stalled = frame[frame["stalled_here"]].astype({"started": bool, "wrong_object": bool, "undid": bool})
    stalls = stalled.groupby([*by, "kind"])[["started", "wrong_object", "undid"]].mean()
    stalls["stalled"] = stalled.groupby([*by, "kind"]).size()
    return {"by_kind": by_kind, "by_position": by_position, "stalls": stalls.reset_index()}
