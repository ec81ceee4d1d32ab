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

from rgvlm.data.storage import OfflineDataset
from rgvlm.envs import encode_observation, env_id_for, make_env, reset_quietly
from rgvlm.envs.seeds import fresh_seed
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
    """
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
        active = [np.flatnonzero(~row) for row in done]
        width = max(len(a) for a in active)
        index = np.stack([np.resize(a, width) if len(a) else np.zeros(width, dtype=np.int64) for a in active])
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
    records = []
    for r in range(runs):
        run_records = []
        for e, ep in enumerate(episodes):
            progress = envs[r][e].unwrapped.instrs.progress
            run_records.append({
                "k": ep.k, "split": ep.split, "seed": ep.seed, "mission": missions[e], "steps": int(steps[r, e]),
                "progress": int(progress), "completion": progress / ep.k, "success": bool(success[r, e]),
                **({"actions": taken[r][e]} if record_actions else {}),
            })
            envs[r][e].close()
        records.append(run_records)
    return records


def evaluate_runs(
    act: ActFn,
    runs: list[tuple[str, int]],
    episodes: list[EvalEpisode],
    env_config: EnvConfig,
    embed_missions: Callable[[list[str]], np.ndarray],
    device: str = "cpu",
    on_finished: Callable[[int], None] | None = None,
    mission_view: str = "whole",
) -> list[dict]:
    """Roll out every (reward set, seed) run on the same episodes at once; ``act`` is the
    stacked policy of ``runs`` (in that order). One record per (run, episode), with
    ``reward_set`` and ``run_seed`` added; ``on_finished`` and ``mission_view`` as for :func:`rollout`."""
    per_run = rollout(act, episodes, env_config, embed_missions, num_runs=len(runs), device=device,
                      on_finished=on_finished, mission_view=mission_view)
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

    models_dir, runs, episodes, env_config, policy, temperature, seed, device, threads = job
    if threads:
        torch.set_num_threads(threads)
    act = load_stacked_policy(models_dir, runs, device, temperature=temperature, seed=seed)
    embed = mission_embedder(act.config.mission_encoder, device="cpu").embed  # as the runs were trained
    records = evaluate_runs(act, runs, episodes, env_config, embed, device, on_finished, act.config.mission_view)
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
) -> list[dict]:
    """Every trained run on every episode under every policy (name -> temperature; 0 is greedy,
    above 0 samples from softmax(logits / temperature)). Work is cut into (policy, k, split)
    chunks, each with its own sampling seed, and spread over ``workers`` processes: the records
    are the same whatever the number of workers. One record per (policy, run, episode)."""
    chunks: dict[tuple, list[EvalEpisode]] = {}
    for ep in episodes:
        chunks.setdefault((ep.k, ep.split), []).append(ep)
    jobs = [(Path(models_dir), list(runs), chunk, env_config, policy, float(temperature),
             _chunk_seed(base_seed, policy, k, split), device, 1 if workers > 1 else 0)
            for policy, temperature in policies.items() for (k, split), chunk in chunks.items()]
    # Longest chunks (large k) first, so the pool does not end on one long straggler.
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][2][0].k)
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
