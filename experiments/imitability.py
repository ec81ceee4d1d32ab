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

    python experiments/imitability.py --name imitability_agent_view
    python experiments/imitability.py --name imitability_state_view --dataset expert_view=state
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.learning import build_dataset, parse_overrides  # noqa: E402
from rgvlm.data import load_dataset  # noqa: E402
from rgvlm.data.storage import write_json_atomic  # noqa: E402
from rgvlm.envs.seeds import validation_seed  # noqa: E402
from rgvlm.evaluation import EvalEpisode, rollout  # noqa: E402
from rgvlm.params import EnvConfig, load_params, train_config  # noqa: E402
from rgvlm.rewards import sparse_rewards  # noqa: E402
from rgvlm.rl.missions import mission_embedder  # noqa: E402
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL, StackedPolicy  # noqa: E402
from rgvlm.rl.runs import iql_config_for  # noqa: E402

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
    args = parser.parse_args(argv)

    data = load_dataset(build_dataset(parse_overrides(args.env), parse_overrides(args.dataset)))
    train = train_config({**load_params()["train"], **parse_overrides(args.variant)})
    config = iql_config_for(data, train.iql)
    embedder = mission_embedder(config.mission_encoder)
    table = torch.as_tensor(embedder.embed(data.missions))
    env_config = EnvConfig(**data.manifest["env"])
    episodes = [EvalEpisode(args.k, "validation", validation_seed(0, i)) for i in range(args.episodes)]
    results = []
    for subset in args.subsets:
        mask = subset_mask(data, subset, args.k)
        # Holding out everything else makes the sampler draw only from the subset.
        transitions = DeviceTransitions(data, [sparse_rewards(data).rewards], table, "cpu", holdout=~mask)
        trainer = MultiRunIQL(config, [args.seed], bc_rows=[0])
        started = time.perf_counter()
        while trainer.step < args.steps:
            trainer.train_step(transitions)
        seconds = time.perf_counter() - started
        policy = StackedPolicy(config, [trainer.run_state(0)["policy"]], temperature=0.0, seed=0)
        index = np.flatnonzero(mask)
        grid = torch.as_tensor(data.obs_grid[data.obs_index[index]])[None]
        carry = torch.as_tensor(data.obs_carry[data.obs_index[index]])[None]
        mission = table[torch.as_tensor(data.mission_of_step[index])][None]
        swapped = mission[:, np.random.default_rng(0).permutation(index.size)]
        with torch.no_grad():
            greedy, greedy_swapped = policy(grid, carry, mission)[0].numpy(), policy(grid, carry, swapped)[0].numpy()
        actions = data.actions[index]
        records = pd.DataFrame(rollout(policy, episodes, env_config, embedder.embed)[0])
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
    write_json_atomic(ROOT / "reports" / "tuning" / f"{args.name}.json", {
        "command": "python experiments/imitability.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "split": "training transitions (fit) and validation layouts (completion; never the evaluation seeds)",
        "dataset": {key: data.manifest[key] for key in ("env", "dataset", "num_episodes", "num_transitions")},
        "mission_encoder": embedder.name, "train_overrides": args.variant, "steps": args.steps, "k": args.k,
        "results": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
