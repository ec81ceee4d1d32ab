"""Can the learner imitate the expert at all? Measured on the training data and on the VALIDATION split.

Why this exists: every reward row of the committed run, BC included, completed about 0.3 of
k = 1 missions, and that ceiling matched the share of door sub-tasks. This script trains one
behaviour-cloning run (the project's stack, networks and optimiser) on only the transitions
of one subset of the k = 1 episodes, for many epochs, and reports:

* ``train_accuracy``: greedy action == dataset action on that subset (a fit test: a network
  that cannot reach ~1 here either lacks capacity or is fed targets no policy of the state
  can produce: random actions of noisy episodes, or an expert acting on memory);
* ``pickup_accuracy`` / ``drop_accuracy``: the same on the pickup / drop steps (put-next
  sub-tasks need both);
* ``mission_swap_changed``: the share of greedy actions that change when each state is paired
  with another episode's mission (about 0: the policy ignores its goal);
* completion of validation k = 1 missions (greedy), split by sub-task kind (open / put).

    python -m experiments.imitability --name imitability_agent_view
    python -m experiments.imitability --name imitability_state_view --dataset expert_view=state
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from experiments.cli import add_params_options, build_dataset, checked_params, command, parse_overrides
from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.data import load_dataset
from rgvlm.envs.seeds import validation_seed
from rgvlm.evaluation import EvalEpisode
from rgvlm.evaluation.stack import evaluate_stack
from rgvlm.params import EnvConfig, train_config
from rgvlm.rewards import sparse_rewards
from rgvlm.rl.missions import mission_embedder
from rgvlm.rl.training import TrainingJob, baseline_weights, iql_config_for, learner_missions

PICKUP, DROP = 3, 4  # MiniGrid's action indices


def subset_mask(data, subset: str, k: int) -> np.ndarray:
    """Transitions of k-sub-task episodes that succeeded, from every kind ("successful") or
    from the expert's own episodes only ("expert": no random actions among the targets)."""
    episodes = pd.DataFrame(data.episodes)
    chosen = (episodes["k"] == k) & episodes["success"]
    if subset == "expert":
        chosen &= episodes["kind"] == "expert"
    return chosen.to_numpy()[data.episode_of_step]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="output name under reports/tuning/")
    parser.add_argument("--env", default="", help="overrides of the env section, k=v,...")
    parser.add_argument("--dataset", default="", help="overrides of the dataset section, k=v,... (dotted keys)")
    parser.add_argument("--variant", default="", help="overrides of the train section, k=v,...")
    parser.add_argument("--subsets", nargs="+", default=["expert", "successful"], choices=["expert", "successful"])
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=100, help="training seed (not the pipeline's)")
    parser.add_argument("--episodes", type=int, default=60, help="validation episodes")
    parser.add_argument("--out", type=Path, default=paths.REPORTS / "tuning", help="where <name>.json goes")
    parser.add_argument("--data-root", type=Path, default=paths.OUTPUTS / "experiments" / "data",
                        help="the cache of collected datasets")
    add_params_options(parser)
    args = parser.parse_args(argv)
    params = checked_params(args)

    data = load_dataset(build_dataset(parse_overrides(args.env), parse_overrides(args.dataset), args.data_root, params))
    train = train_config({**params["train"], **parse_overrides(args.variant)})
    config = iql_config_for(data, train.iql)
    table, observation_rows = learner_missions(data, config)
    env_config = EnvConfig(**data.manifest["env"])
    episodes = [EvalEpisode(args.k, "validation", validation_seed(0, i)) for i in range(args.episodes)]
    results = []
    for subset in args.subsets:
        mask = subset_mask(data, subset, args.k)
        # One plain behaviour-cloning run (its critic, unused, on the sparse reward); holding out
        # everything else makes the sampler draw only from the subset.
        stack = TrainingJob(data, {"bc": sparse_rewards(data).rewards}, [args.seed], config,
                            baselines={"bc": baseline_weights(data, "bc")}, mission_table=table,
                            observation_missions=observation_rows, holdout=~mask, probe=False).build()
        started = time.perf_counter()
        stack.train(args.steps, progress=False)
        seconds = time.perf_counter() - started
        policy = stack.policy(temperature=0.0, seed=0)
        index = np.flatnonzero(mask)
        grid = torch.as_tensor(data.obs_grid[data.obs_index[index]])[None]
        carry = torch.as_tensor(data.obs_carry[data.obs_index[index]])[None]
        # The missions the networks read at those states (the remaining ones with train.mission_view remaining).
        rows = data.mission_of_step[index] if observation_rows is None else observation_rows[data.obs_index[index]]
        mission = table[torch.as_tensor(rows)][None]
        swapped = mission[:, np.random.default_rng(0).permutation(index.size)]
        with torch.no_grad():
            greedy, greedy_swapped = policy(grid, carry, mission)[0].numpy(), policy(grid, carry, swapped)[0].numpy()
        actions = data.actions[index]
        records = pd.DataFrame(evaluate_stack(stack, episodes, env_config))
        records["kind"] = records["mission"].str.split().str[0]
        by_kind = records.groupby("kind")["completion"].agg(["mean", "size"])
        results.append({
            "subset": subset, "transitions": int(index.size),
            "epochs": round(args.steps * config.batch_size / index.size, 1), "train_seconds": round(seconds, 1),
            "train_accuracy": float(np.mean(greedy == actions)),
            "pickup_accuracy": float(np.mean(greedy[actions == PICKUP] == PICKUP)),
            "drop_accuracy": float(np.mean(greedy[actions == DROP] == DROP)),
            "mission_swap_changed": float(np.mean(greedy != greedy_swapped)),
            "validation_completion": float(records["completion"].mean()),
            "validation_completion_by_kind": {kind: {"completion": float(row["mean"]), "episodes": int(row["size"])}
                                              for kind, row in by_kind.iterrows()},
        })
        print(results[-1], flush=True)
    write_json_atomic(args.out / f"{args.name}.json", {
        "command": command("imitability", argv),
        "split": "training transitions (fit) and validation layouts (completion; never the evaluation seeds)",
        "dataset": {key: data.manifest[key] for key in ("env", "dataset", "num_episodes", "num_transitions")},
        "mission_encoder": mission_embedder(config.mission_encoder).name, "train_overrides": args.variant, "steps": args.steps, "k": args.k,
        "results": results,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
