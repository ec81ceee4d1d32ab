"""Evaluation rollouts: episodes per second of the MiniGrid engine vs the array engine, in one process.

The policies are the committed profile's network (the ``train`` section of a params file, the
grid of its ``env`` section) with random initial weights, ``--runs`` of them stacked as
evaluation stacks the default run's 41 trained runs. Random policies rarely finish a mission,
so their episodes run to the time limit: the longest rollouts evaluation can have.

(a) ``rollout``: :func:`rgvlm.evaluation.rollout` on ``--episodes-per-k`` fresh start states of
    every k, one policy temperature, this process only (torch at ``--threads`` threads), with
    ``engine="minigrid"`` (one MiniGrid env per run and episode, the reference) and then
    ``engine="arrays"`` (every episode stepped at once on its encoded grid); the records of both
    are compared (``identical``), and the time spent in the policy calls is reported apart.
(b) ``evaluate_policies`` (``--workers N``): the whole evaluation stage's call, every params
    policy (greedy and sampled), checkpoints written to a temporary models directory and loaded
    by ``N`` worker processes as the pipeline does, with each engine; the records are compared.

(c) ``--precision fp32 bf16``: (a)'s array engine again with the policies' forward in each other
    ``train.precision`` (``arrays_bf16``: bfloat16 autocast), the share of its episode records equal to
    fp32's (bf16 logits may flip an argmax or a sample), and the policy forward alone on the first
    step's observations (every episode), fp32 and bf16 calls alternated block by block
    (``forward_blocks``): the ratio to read on a shared machine.

Written to ``reports/benchmarks/evaluation_throughput.json``.

    python benchmarks/evaluation_throughput.py                     # (a), 41 runs x 60 episodes
    python benchmarks/evaluation_throughput.py --workers 2         # and (b)
    python benchmarks/evaluation_throughput.py --precision fp32 bf16  # and (c)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgvlm.atomic import write_json_atomic  # noqa: E402
from rgvlm.envs import grid_shape  # noqa: E402
from rgvlm.envs.seeds import fresh_seed  # noqa: E402
from rgvlm.evaluation.rollout import EvalEpisode, evaluate_policies, rollout  # noqa: E402
from rgvlm.params import PRECISIONS, env_config, evaluation_config, load_params, train_config  # noqa: E402
from rgvlm.rl.iql import IQLLearner  # noqa: E402
from rgvlm.rl.missions import mission_embedder  # noqa: E402
from rgvlm.rl.multirun import StackedPolicy  # noqa: E402
from rgvlm.rl.runs import run_paths  # noqa: E402

ENGINES = ("minigrid", "arrays")


def policy_states(config, runs: int) -> list[dict]:
    """Random initial policy weights of runs 0..runs-1, as the trainer would start them."""
    return [IQLLearner(config, device="cpu", seed=seed).policy.state_dict() for seed in range(runs)]


def time_rollout(config, states, episodes, env, temperature, engine) -> dict:
    """One in-process rollout of every run on every episode: seconds, of which in the policy, and
    the first policy call's inputs (every episode's start state)."""
    policy = StackedPolicy(config, states, temperature=temperature, seed=0)
    embed = mission_embedder(config.mission_encoder).embed
    in_policy = [0.0, 0]
    first = []

    def act(grid, carry, mission):
        if not first:
            first.append((grid, carry, mission))
        started = time.perf_counter()
        actions = policy(grid, carry, mission)
        in_policy[0] += time.perf_counter() - started
        in_policy[1] += 1
        return actions

    started = time.perf_counter()
    records = rollout(act, episodes, env, embed, num_runs=len(states), engine=engine)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "policy_seconds": in_policy[0], "policy_calls": in_policy[1], "records": records,
            "first_inputs": first[0]}


def forward_blocks(policies: dict[str, StackedPolicy], inputs, blocks: int, calls: int) -> list[dict[str, float]]:
    """Policy calls per second of each policy on the same inputs, ``calls`` each in turn, block after
    block (on a shared machine the policies of one block see about the same load)."""
    out = []
    for _ in range(blocks):
        block = {}
        for name, policy in policies.items():
            started = time.perf_counter()
            for _ in range(calls):
                policy(*inputs)
            block[name] = round(calls / (time.perf_counter() - started), 2)
        out.append(block)
    return out


def write_checkpoints(models_dir: Path, config, states) -> list[tuple[str, int]]:
    """The random runs as trained-run checkpoints (what evaluate_policies loads)."""
    runs = []
    for seed, state in enumerate(states):
        path = run_paths(models_dir, "random", seed)[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": dataclasses.asdict(config), "policy": state}, path)
        runs.append(("random", seed))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--runs", type=int, default=41, help="stacked policies (the default run evaluates 41)")
    parser.add_argument("--episodes-per-k", type=int, default=10, help="fresh start states per k")
    parser.add_argument("--ks", type=int, nargs="*", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--temperature", type=float, default=0.5, help="(a)'s policy: 0 greedy, else sampled")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of (a) (evaluation workers use 1)")
    parser.add_argument("--workers", type=int, default=0, help="also time evaluate_policies with this many workers")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS,
                        help="(c): also roll out (array engine) with the policies' forward at these precisions")
    parser.add_argument("--forward-blocks", type=int, default=5, help="(c): alternated blocks of policy calls")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks" / "evaluation_throughput.json"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    env = env_config(params["env"])
    height, width = grid_shape(env.room_size)
    config = dataclasses.replace(train_config(params["train"]).iql, grid_height=height, grid_width=width)
    evaluation = evaluation_config(params["evaluation"])
    states = policy_states(config, args.runs)
    episodes = [EvalEpisode(k, "fresh", fresh_seed(evaluation.seed, i)) for k in args.ks
                for i in range(args.episodes_per_k)]
    count = args.runs * len(episodes)

    report: dict = {
        "device": f"cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}",
        "runs": args.runs, "episodes_per_run": len(episodes), "ks": args.ks, "temperature": args.temperature,
        "torch_threads": args.threads, "env": dataclasses.asdict(env),
    }
    timed = {engine: time_rollout(config, states, episodes, env, args.temperature, engine) for engine in ENGINES}
    steps = sum(r["steps"] for run in timed["arrays"]["records"] for r in run)
    report["rollout"] = {
        "episodes": count, "env_steps": steps,
        "identical": timed["arrays"]["records"] == timed["minigrid"]["records"],
        **{engine: {"seconds": round(t["seconds"], 2), "episodes_per_s": round(count / t["seconds"], 1),
                    "env_steps_per_s": round(steps / t["seconds"]), "policy_seconds": round(t["policy_seconds"], 2),
                    "policy_share": round(t["policy_seconds"] / t["seconds"], 3), "policy_calls": t["policy_calls"]}
           for engine, t in timed.items()},
    }
    report["rollout"]["speedup"] = round(timed["minigrid"]["seconds"] / timed["arrays"]["seconds"], 2)

    lower = [p for p in args.precision if p != config.precision]
    if lower:
        reference = timed["arrays"]
        policies = {config.precision: StackedPolicy(config, states, temperature=args.temperature, seed=0)}
        for precision in lower:
            other = dataclasses.replace(config, precision=precision)
            t = time_rollout(other, states, episodes, env, args.temperature, "arrays")
            pairs = [(a, b) for run_a, run_b in zip(t["records"], reference["records"], strict=True)
                     for a, b in zip(run_a, run_b, strict=True)]
            report["rollout"][f"arrays_{precision}"] = {
                "seconds": round(t["seconds"], 2), "episodes_per_s": round(count / t["seconds"], 1),
                "policy_seconds": round(t["policy_seconds"], 2), "policy_share": round(t["policy_seconds"] / t["seconds"], 3),
                "speedup_vs_arrays": round(reference["seconds"] / t["seconds"], 2),
                "records_equal_to_arrays": round(sum(a == b for a, b in pairs) / len(pairs), 4),
                "success_rate": round(sum(a["success"] for a, _ in pairs) / len(pairs), 4),
            }
            policies[precision] = StackedPolicy(other, states, temperature=args.temperature, seed=0)
        report["rollout"]["arrays"]["success_rate"] = round(
            sum(r["success"] for run in reference["records"] for r in run) / count, 4)
        inputs = reference["first_inputs"]
        blocks = forward_blocks(policies, inputs, args.forward_blocks, calls=5)
        report["forward_blocks"] = {
            "inputs": f"the first step of every episode: {list(inputs[0].shape[:2])} (runs, episodes)",
            "calls_per_s": blocks,
            f"ratio_to_{config.precision}_median": {
                p: float(np.median([blk[p] / blk[config.precision] for blk in blocks])) for p in lower},
        }

    if args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            runs = write_checkpoints(Path(tmp), config, states)
            results, records = {}, {}
            for engine in ENGINES:
                started = time.perf_counter()
                records[engine] = evaluate_policies(Path(tmp), runs, episodes, env, evaluation.policies,
                                                    evaluation.seed, "cpu", args.workers, engine=engine)
                results[engine] = time.perf_counter() - started
        total = len(records["arrays"])
        report["evaluate_policies"] = {
            "workers": args.workers, "policies": dict(evaluation.policies), "episodes": total,
            "identical": records["arrays"] == records["minigrid"],
            **{engine: {"seconds": round(s, 2), "episodes_per_s": round(total / s, 1)} for engine, s in results.items()},
            "speedup": round(results["minigrid"] / results["arrays"], 2),
        }
    report["command"] = "python benchmarks/evaluation_throughput.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    write_json_atomic(Path(args.out), report)
    print(json.dumps({k: v for k, v in report.items() if k != "env"}, indent=1))
    if not report["rollout"]["identical"] or not report.get("evaluate_policies", {}).get("identical", True):
        print("the engines' records differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
