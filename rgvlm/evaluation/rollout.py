"""Vectorised evaluation rollouts: every episode of every run steps in lockstep, with one
batched call of the stacked policies per step.

Episodes are drawn on two splits of initial states:
- ``seen``: layouts (seeds) that appear in the offline dataset;
- ``fresh``: seeds no dataset episode used, the paper's randomised initial states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.envs.babyai.core.verifier import OpenInstr, PutNextInstr

from rgvlm.data.storage import OfflineDataset
from rgvlm.envs import MAX_SUBTASKS, encode_observation, env_id_for, make_env, reset_quietly
from rgvlm.envs.seeds import fresh_seed
from rgvlm.envs.suite import EMPTY_CARRY, EMPTY_CELL, OrderedInstr
from rgvlm.params import EnvConfig
from rgvlm.progress import Progress
from rgvlm.rl.missions import RolloutMissions

#: act(grid uint8 [R,M,H,W,3], carry uint8 [R,M,2], mission float [R,M,S,E]) -> actions long [R,M]
ActFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalEpisode:
    """One evaluation start state."""

    k: int
    split: str
    seed: int


def evaluation_episodes(
    dataset: OfflineDataset, ks: tuple[int, ...], splits: tuple[str, ...], episodes_per_k: int | Mapping[str, int],
    base_seed: int
) -> list[EvalEpisode]:
    """The start states every run is evaluated on (the same for all runs); ``episodes_per_k``
    is one count for every split or a count per split."""
    count = episodes_per_k if isinstance(episodes_per_k, Mapping) else {s: episodes_per_k for s in splits}
    episodes = []
    for k in ks:
        if "seen" in splits:
            seen = list(dict.fromkeys(e["seed"] for e in dataset.episodes if e["k"] == k))
            if len(seen) < count["seen"]:
                raise ValueError(
                    f"evaluation.episodes_per_k={count['seen']}: the dataset has only {len(seen)} layouts "
                    f"with k={k} for the 'seen' split"
                )
            episodes += [EvalEpisode(k, "seen", s) for s in seen[: count["seen"]]]
        if "fresh" in splits:
            episodes += [EvalEpisode(k, "fresh", fresh_seed(base_seed, i)) for i in range(count["fresh"])]
    return episodes


def rollout(
    act: ActFn,
    episodes: list[EvalEpisode],
    env_config: EnvConfig,
    embed_missions: Callable[[list[str]], np.ndarray],
    num_runs: int = 1,
    device: str | torch.device = "cpu",
    on_finished: Callable[[int], None] | None = None,
    record_actions: bool = False,
    mission_view: str = "whole",
    engine: str = "auto",
) -> list[list[dict]]:
    """Roll ``num_runs`` policies out on every episode, all in lockstep, until success or
    time-out; ``on_finished(count)`` hears of the episodes (of all runs) that ended at each step.
    ``record_actions`` adds each episode's actions to its record (``actions``), so that it can be
    replayed (:mod:`rgvlm.evaluation.chaining` diagnoses where a policy stops that way).
    ``mission_view`` is what the policies read as their mission (``train.mission_view``; see
    :class:`rgvlm.rl.missions.RolloutMissions`): ``remaining`` tracks each episode's progress from
    its observations, as the runs' training data did.

    ``act`` gets the observations of the active episodes of every run as ``[R, M, ...]``
    tensors (M = the most episodes any run still has running; shorter rows are padded with
    a repeat and their actions ignored) and returns actions ``[R, M]``: one batched policy
    call per step for all runs. Returns, per run, one record per episode: k, split, seed,
    mission, steps, progress (sub-tasks done), completion (progress / k) and success.

    ``engine`` says how the environments step: ``"minigrid"`` steps one MiniGrid env per (run,
    episode) and encodes it with :func:`encode_observation` (the reference); ``"arrays"`` steps
    every (run, episode) at once on their encoded grids (:class:`_ArrayStepper`, the same
    transitions for this suite, its environment part over ten times faster); ``"auto"`` (default) uses the arrays
    when every start state is one they support, else MiniGrid. The records are identical
    (``tests/test_evaluation.py`` checks it with a noisy bot and with a random walk heavy in pickups,
    drops and toggles).
    """
    if engine not in ("auto", "arrays", "minigrid"):
        raise ValueError(f"engine={engine!r}: expected 'auto', 'arrays' or 'minigrid'")
    if engine != "minigrid":
        # All runs start from the same states: one env per episode is enough to draw them.
        starts = [make_env(env_id_for(ep.k), **env_config.kwargs()) for ep in episodes]
        for env, ep in zip(starts, episodes, strict=True):
            reset_quietly(env, ep.seed)
        stepper = _ArrayStepper.from_envs(starts, num_runs)
        missions = [env.unwrapped.mission for env in starts]
        for env in starts:
            env.close()
        if stepper is not None:
            return _rollout_arrays(act, stepper, episodes, missions, embed_missions, num_runs, device, on_finished,
                                   record_actions, mission_view)
        if engine == "arrays":
            raise ValueError("engine='arrays': a start state has objects or instructions the array stepper does "
                             "not model; use engine='minigrid'")
    return _rollout_minigrid(act, episodes, env_config, embed_missions, num_runs, device, on_finished, record_actions,
                             mission_view)


def _active_index(done: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Each run's active episodes and the ``[R, M]`` index of the policy call (rows padded with a
    repeat): the same layout for both engines, so a sampling policy draws the same numbers."""
    active = [np.flatnonzero(~row) for row in done]
    width = max(len(a) for a in active)
    index = np.stack([np.resize(a, width) if len(a) else np.zeros(width, dtype=np.int64) for a in active])
    return active, index


def _rollout_minigrid(act, episodes, env_config, embed_missions, num_runs, device, on_finished,
                      record_actions, mission_view) -> list[list[dict]]:
    """The reference engine: one MiniGrid env per (run, episode), stepped one at a time."""
    runs, count = num_runs, len(episodes)
    envs = [[make_env(env_id_for(ep.k), **env_config.kwargs()) for ep in episodes] for _ in range(runs)]
    for row in envs:
        for env, ep in zip(row, episodes, strict=True):
            env.unwrapped.agent_view_obs = False  # the policy reads encode_observation only
            reset_quietly(env, ep.seed)
    missions = [env.unwrapped.mission for env in envs[0]]  # the same start states for every run
    read = RolloutMissions(missions, embed_missions, mission_view, runs, device)
    first = [encode_observation(env) for env in envs[0]]
    grid = np.stack([np.stack([o[0] for o in first])] * runs)  # [R, E, H, W, 3], updated in place
    carry = np.stack([np.stack([o[1] for o in first])] * runs)
    for e, (start_grid, _) in enumerate(first):
        for r in range(runs):
            read.observe(r, e, start_grid)
    steps = np.zeros((runs, count), dtype=np.int64)
    done = np.zeros((runs, count), dtype=bool)
    success = np.zeros((runs, count), dtype=bool)
    taken: list[list[list[int]]] = [[[] for _ in episodes] for _ in range(runs)]
    while not done.all():
        active, index = _active_index(done)
        rows = np.arange(runs)[:, None]
        finished = 0
        with torch.no_grad():
            actions = act(torch.as_tensor(grid[rows, index], device=device),
                          torch.as_tensor(carry[rows, index], device=device),
                          read.vectors(index)).cpu().numpy()
        for r, episode_ids in enumerate(active):
            for e, action in zip(episode_ids, actions[r, : len(episode_ids)], strict=True):
                env = envs[r][e]
                if record_actions:
                    taken[r][e].append(int(action))
                _, reward, terminated, truncated, _ = env.step(int(action))
                steps[r, e] += 1
                grid[r, e], carry[r, e] = encode_observation(env)
                read.observe(r, e, grid[r, e])
                if terminated or truncated:
                    done[r, e] = True
                    success[r, e] = bool(terminated and reward > 0)
                    finished += 1
        if finished and on_finished is not None:
            on_finished(finished)
    progress = np.array([[envs[r][e].unwrapped.instrs.progress for e in range(count)] for r in range(runs)])
    for row in envs:
        for env in row:
            env.close()
    return _records(episodes, missions, steps, progress, success, taken if record_actions else None)


def _records(episodes, missions, steps, progress, success, taken) -> list[list[dict]]:
    records = []
    for r in range(steps.shape[0]):
        records.append([{
            "k": ep.k, "split": ep.split, "seed": ep.seed, "mission": missions[e], "steps": int(steps[r, e]),
            "progress": int(progress[r, e]), "completion": int(progress[r, e]) / ep.k, "success": bool(success[r, e]),
            **({"actions": taken[r][e]} if taken is not None else {}),
        } for e, ep in enumerate(episodes)])
    return records


def _rollout_arrays(act, stepper: _ArrayStepper, episodes, missions, embed_missions, num_runs, device, on_finished,
                    record_actions, mission_view) -> list[list[dict]]:
    """The array engine: the same loop as :func:`_rollout_minigrid`, one vectorised step for all."""
    runs, count = num_runs, len(episodes)
    read = RolloutMissions(missions, embed_missions, mission_view, runs, device)
    tracking = mission_view != "whole"
    # (run, episode) pairs whose newest observation the tracker has not read yet: all, at the start.
    unread = (np.repeat(np.arange(runs), count), np.tile(np.arange(count), runs))
    done = np.zeros((runs, count), dtype=bool)
    success = np.zeros((runs, count), dtype=bool)
    # int8: actions are 0..6, and a chunk of 41 runs x 600 episodes x 336 steps stays small.
    taken = np.zeros((runs, count, int(stepper.max_steps.max())), dtype=np.int8) if record_actions else None
    rows = np.arange(runs)[:, None]
    while not done.all():
        active, index = _active_index(done)
        with torch.no_grad():
            grids = stepper.obs_grid()  # one encoding per step, for the tracker and the policy
            if tracking:
                for run, episode in zip(*(u.tolist() for u in unread), strict=True):
                    read.observe(run, episode, grids[run, episode])
            actions = act(torch.as_tensor(grids[rows, index], device=device),
                          torch.as_tensor(stepper.carry[rows, index], device=device),
                          read.vectors(index)).cpu().numpy()
        # Every run's active episodes as flat (run, episode, action) triples, in the reference's order.
        r = np.repeat(np.arange(runs), [len(a) for a in active])
        e = np.concatenate(active)
        a = np.concatenate([actions[i, : len(ids)] for i, ids in enumerate(active)]).astype(np.int64)
        if taken is not None:
            taken[r, e, stepper.steps[r, e]] = a
        terminated, truncated = stepper.step(r, e, a)
        unread = (r, e)
        ended = terminated | truncated
        done[r[ended], e[ended]] = True
        success[r[ended], e[ended]] = terminated[ended]  # the suite's reward on success is 1 (> 0)
        if ended.any() and on_finished is not None:
            on_finished(int(ended.sum()))
    actions_taken = None
    if taken is not None:
        actions_taken = [[taken[r, e, : stepper.steps[r, e]].tolist() for e in range(count)] for r in range(runs)]
    return _records(episodes, missions, stepper.steps, stepper.progress, success, actions_taken)


_EMPTY, _WALL, _DOOR, _KEY, _BALL, _AGENT = (OBJECT_TO_IDX[n] for n in ("empty", "wall", "door", "key", "ball", "agent"))
_DIR_X = np.array([1, 0, -1, 0])  # minigrid's DIR_TO_VEC, split by axis
_DIR_Y = np.array([0, 1, 0, -1])
_LEFT, _RIGHT, _FORWARD, _PICKUP, _DROP, _TOGGLE, _DONE = range(7)  # minigrid's Actions
_OPEN, _PUT_NEXT = 0, 1


class _ArrayStepper:
    """Every (run, episode) of a rollout as arrays, stepped at once with MiniGrid's rules for the
    objects of this suite (walls, unlocked doors, balls and keys of unique type and colour) and
    :class:`~rgvlm.envs.suite.OrderedInstr`'s verification.

    Why it is exact: a MiniGrid step changes at most the cell in front of the agent (pickup,
    drop, toggle), the agent's position, direction and carried object, and the step count; its
    observation here is :func:`encode_observation`, a pure function of those. The verifier reads
    whether a door of the sub-task's colour is open, or whether the (unique) object to move lies
    next to the (unique) fixed object, both out of the grid (a carried object is in no cell, as
    its ``cur_pos`` is (-1, -1)); BabyAI's ``update_objs_poss`` after a drop keeps each
    description's object set, so it changes nothing the verifier reads. Start states with
    anything else (boxes, locked doors, repeated objects, other instructions) are refused by
    :meth:`from_envs`, and the rollout falls back to MiniGrid.

    Shapes: ``cells`` [R, E, H, W, 3] the encoded grid without the agent, ``pos`` [R, E, 2] (x, y),
    ``direction``, ``steps``, ``progress`` [R, E]; ``carry`` [R, E, 2] as encode_observation's.
    """

    def __init__(self, cells, pos, direction, carry, max_steps, leaves, num_leaves):
        self.cells, self.pos, self.direction, self.carry = cells, pos, direction, carry
        self.max_steps = max_steps  # [E]
        self.leaves = leaves  # [E, MAX_SUBTASKS, 5]: kind, then (type, colour) of the door / moved / fixed object
        self.num_leaves = num_leaves  # [E]
        runs, count = pos.shape[:2]
        self.steps = np.zeros((runs, count), dtype=np.int64)
        self.progress = np.zeros((runs, count), dtype=np.int64)

    @classmethod
    def from_envs(cls, envs, runs: int) -> _ArrayStepper | None:
        """The start states of freshly reset ``envs`` (one per episode) for ``runs`` runs, or None
        when one of them has something this stepper does not model."""
        cells, pos, direction, carry, max_steps, leaves, num_leaves = [], [], [], [], [], [], []
        for env in envs:
            u = env.unwrapped
            if not isinstance(u.instrs, OrderedInstr) or u.carrying is not None or u.step_count != 0:
                return None
            objects = [obj for obj in u.grid.grid if obj is not None]
            if any(obj.type not in ("wall", "door", "key", "ball") for obj in objects):
                return None
            if any(obj.type == "door" and obj.is_locked for obj in objects):
                return None
            movable = [(obj.type, obj.color) for obj in objects if obj.type in ("key", "ball")]
            if len(set(movable)) != len(movable):
                return None
            rows = np.zeros((MAX_SUBTASKS, 5), dtype=np.int64)
            for i, leaf in enumerate(u.instrs.leaves):
                if (type(leaf) is OpenInstr and leaf.desc.type == "door" and leaf.desc.color is not None
                        and leaf.desc.loc is None):
                    rows[i] = (_OPEN, _DOOR, COLOR_TO_IDX[leaf.desc.color], 0, 0)
                elif (type(leaf) is PutNextInstr and all(
                        d.type in ("key", "ball") and d.color is not None and d.loc is None and len(d.obj_set) == 1
                        and d.obj_set[0].type == d.type and d.obj_set[0].color == d.color
                        for d in (leaf.desc_move, leaf.desc_fixed))):
                    rows[i] = (_PUT_NEXT, OBJECT_TO_IDX[leaf.desc_move.type], COLOR_TO_IDX[leaf.desc_move.color],
                               OBJECT_TO_IDX[leaf.desc_fixed.type], COLOR_TO_IDX[leaf.desc_fixed.color])
                else:
                    return None
            grid, c = encode_observation(env)
            x, y = u.agent_pos
            under = u.grid.get(x, y)  # the cell the agent stands on, without the agent
            grid[y, x] = EMPTY_CELL if under is None else under.encode()
            cells.append(grid)
            pos.append((x, y))
            direction.append(u.agent_dir)
            carry.append(c)
            max_steps.append(u.max_steps)
            leaves.append(rows)
            num_leaves.append(len(u.instrs.leaves))
        # Copies per run: the runs' episodes diverge from the first step.
        tile = lambda a: np.repeat(np.asarray(a)[None], runs, axis=0)  # noqa: E731
        return cls(tile(np.stack(cells)), tile(np.asarray(pos, dtype=np.int64)),
                   tile(np.asarray(direction, dtype=np.int64)), tile(np.stack(carry)),
                   np.asarray(max_steps, dtype=np.int64), np.stack(leaves), np.asarray(num_leaves, dtype=np.int64))

    def obs_grid(self) -> np.ndarray:
        """encode_observation's grids [R, E, H, W, 3]: the cells with the agent drawn in."""
        grid = self.cells.copy()
        runs, count = self.pos.shape[:2]
        r, e = np.meshgrid(np.arange(runs), np.arange(count), indexing="ij")
        grid[r, e, self.pos[..., 1], self.pos[..., 0]] = np.stack(
            [np.full_like(self.direction, _AGENT), np.full_like(self.direction, COLOR_TO_IDX["red"]), self.direction],
            axis=-1).astype(np.uint8)
        return grid

    def step(self, r: np.ndarray, e: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One MiniGrid step of episodes (r, e) (distinct pairs) with ``action``; returns their
        (terminated, truncated), as ``env.step`` would."""
        if ((action < _LEFT) | (action > _DONE)).any():
            raise ValueError(f"Unknown action: {action[(action < _LEFT) | (action > _DONE)][0]}")
        self.steps[r, e] += 1
        d = self.direction[r, e]
        x, y = self.pos[r, e, 0], self.pos[r, e, 1]
        fx, fy = x + _DIR_X[d], y + _DIR_Y[d]
        front = self.cells[r, e, fy, fx]  # [n, 3], a copy
        kind, state = front[:, 0], front[:, 2]
        self.direction[r, e] = np.where(action == _LEFT, (d - 1) % 4, np.where(action == _RIGHT, (d + 1) % 4, d))
        # Forward: onto an empty cell or an open door (walls, closed doors, balls and keys block).
        move = (action == _FORWARD) & ((kind == _EMPTY) | ((kind == _DOOR) & (state == 0)))
        self.pos[r[move], e[move]] = np.stack([fx[move], fy[move]], axis=-1)
        carrying = self.carry[r, e, 0] != _EMPTY
        pick = (action == _PICKUP) & ((kind == _KEY) | (kind == _BALL)) & ~carrying
        drop = (action == _DROP) & (kind == _EMPTY) & carrying
        toggle = (action == _TOGGLE) & (kind == _DOOR)  # unlocked doors: open <-> closed
        if pick.any():
            self.carry[r[pick], e[pick]] = front[pick, :2]
            self.cells[r[pick], e[pick], fy[pick], fx[pick]] = EMPTY_CELL
        if drop.any():
            held = self.carry[r[drop], e[drop]]
            self.cells[r[drop], e[drop], fy[drop], fx[drop]] = np.concatenate(
                [held, np.zeros((len(held), 1), dtype=np.uint8)], axis=1)
            self.carry[r[drop], e[drop]] = EMPTY_CARRY
        if toggle.any():
            self.cells[r[toggle], e[toggle], fy[toggle], fx[toggle], 2] = 1 - state[toggle]
        truncated = self.steps[r, e] >= self.max_steps[e]
        # OrderedInstr.verify: sub-tasks complete in order, several in one step if their effects hold.
        progress = self.progress[r, e]
        for _ in range(MAX_SUBTASKS):
            pending = np.flatnonzero(progress < self.num_leaves[e])
            if not len(pending):
                break
            holds = self._leaf_holds(r[pending], e[pending], progress[pending])
            if not holds.any():
                break
            progress[pending[holds]] += 1
        self.progress[r, e] = progress
        return progress == self.num_leaves[e], truncated

    def _leaf_holds(self, r, e, leaf_index) -> np.ndarray:
        """OrderedInstr.leaf_holds of leaf ``leaf_index`` of episodes (r, e), from their cells."""
        leaf = self.leaves[e, leaf_index]  # [n, 5]
        cells = self.cells[r, e]  # [n, H, W, 3]
        kinds, colours = cells[..., 0], cells[..., 1]

        def where(obj_type, colour):
            match = (kinds == obj_type[:, None, None]) & (colours == colour[:, None, None])
            flat = match.reshape(len(match), -1)
            at = flat.argmax(axis=1)
            return flat.any(axis=1), at // cells.shape[2], at % cells.shape[2]

        door_open = ((kinds == _DOOR) & (colours == leaf[:, 2, None, None]) & (cells[..., 2] == 0)).any(axis=(1, 2))
        moved_in, my, mx = where(leaf[:, 1], leaf[:, 2])
        fixed_in, fy, fx = where(leaf[:, 3], leaf[:, 4])
        next_to = moved_in & fixed_in & (np.abs(mx - fx) + np.abs(my - fy) == 1)
        return np.where(leaf[:, 0] == _OPEN, door_open, next_to)


def evaluate_runs(
    act: ActFn,
    runs: list[tuple[str, int]],
    episodes: list[EvalEpisode],
    env_config: EnvConfig,
    embed_missions: Callable[[list[str]], np.ndarray],
    device: str = "cpu",
    on_finished: Callable[[int], None] | None = None,
    engine: str = "auto",
    mission_view: str = "whole",
) -> list[dict]:
    """Roll out every (reward set, seed) run on the same episodes at once; ``act`` is the
    stacked policy of ``runs`` (in that order). One record per (run, episode), with
    ``reward_set`` and ``run_seed`` added; ``on_finished``, ``engine`` and ``mission_view`` as for :func:`rollout`."""
    per_run = rollout(act, episodes, env_config, embed_missions, num_runs=len(runs), device=device,
                      on_finished=on_finished, engine=engine, mission_view=mission_view)
    records = []
    for (reward_set, seed), run_records in zip(runs, per_run, strict=True):
        records += [{**record, "reward_set": reward_set, "run_seed": seed} for record in run_records]
    return records


def _chunk_seed(base_seed: int, policy: str, k: int, split: str) -> int:
    """The sampling seed of one (policy, k, split) chunk: fixed by the chunk, not by the worker."""
    key = [base_seed, k, sum(map(ord, split)), sum(map(ord, policy))]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def _evaluate_chunk(job: tuple, on_finished: Callable[[int], None] | None = None) -> list[dict]:
    """One (policy, k, split) chunk of :func:`evaluate_policies`, in a worker process (or this one)."""
    from rgvlm.rl.missions import mission_embedder
    from rgvlm.rl.runs import load_stacked_policy

    models_dir, runs, episodes, env_config, policy, temperature, seed, device, threads, engine = job
    if threads:
        torch.set_num_threads(threads)
    act = load_stacked_policy(models_dir, runs, device, temperature=temperature, seed=seed)
    embed = mission_embedder(act.config.mission_encoder, device="cpu").embed  # as the runs were trained
    records = evaluate_runs(act, runs, episodes, env_config, embed, device, on_finished, engine,
                            act.config.mission_view)
    return [{**record, "policy": policy} for record in records]


def _evaluate_numbered(numbered: tuple[int, tuple]) -> tuple[int, list[dict]]:
    """:func:`_evaluate_chunk` of job ``i``, returned with ``i`` (the pool hands chunks back as they end)."""
    i, job = numbered
    return i, _evaluate_chunk(job)


def evaluate_policies(
    models_dir: Path,
    runs: Sequence[tuple[str, int]],
    episodes: list[EvalEpisode],
    env_config: EnvConfig,
    policies: Mapping[str, float],
    base_seed: int = 0,
    device: str = "cpu",
    workers: int = 1,
    engine: str = "auto",
) -> list[dict]:
    """Every trained run on every episode under every policy (name -> temperature; 0 is greedy,
    above 0 samples from softmax(logits / temperature)). Work is cut into (policy, k, split)
    chunks, each with its own sampling seed, and spread over ``workers`` processes: the records
    are the same whatever the number of workers. One record per (policy, run, episode);
    ``engine`` as for :func:`rollout` (the records do not depend on it)."""
    chunks: dict[tuple, list[EvalEpisode]] = {}
    for ep in episodes:
        chunks.setdefault((ep.k, ep.split), []).append(ep)
    jobs = [(Path(models_dir), list(runs), chunk, env_config, policy, float(temperature),
             _chunk_seed(base_seed, policy, k, split), device, 1 if workers > 1 else 0, engine)
            for policy, temperature in policies.items() for (k, split), chunk in chunks.items()]
    # Longest chunks first, so the pool does not end on one long straggler: a chunk's work grows with
    # its episodes and their time limit (k + 1 allowances). The records do not depend on the order.
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][2]) * (jobs[i][2][0].k + 1))
    # Episodes done in the terminal (rgvlm.progress): as each ends here, or as a worker's chunk ends
    # (a worker process's stderr is the kernel's, which papermill puts in the notebook).
    total = len(policies) * len(runs) * len(episodes)
    with Progress(f"evaluation rollouts, {len(runs)} runs x {len(policies)} policies", total, "episodes") as bar:
        if workers > 1:
            import multiprocessing

            results = {}
            with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for i, records in pool.imap_unordered(_evaluate_numbered, [(i, jobs[i]) for i in order], chunksize=1):
                    results[i] = records
                    bar.update(len(records))
        else:
            results = {i: _evaluate_chunk(jobs[i], bar.update) for i in order}
    return [record for i in range(len(jobs)) for record in results[i]]
