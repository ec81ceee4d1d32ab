"""A peer baseline no one here wrote: d3rlpy's DiscreteBC and DiscreteCQL, trained on the
offline dataset through the documented conversion of :mod:`rgvlm.peer.d3rlpy_baseline` and
rolled out by the project's own :func:`rgvlm.evaluation.rollout`, greedy and sampled.

Evaluates on the VALIDATION split by default (``rgvlm.envs.seeds.validation_seed``: neither in
the dataset nor among the evaluation seeds); ``--split fresh`` uses the fresh evaluation
layouts (``fresh_seed(--eval-seed, i)``). Writes ``--out`` (default
``reports/tuning/d3rlpy_peer.json``): per-episode records (reward set ``d3rlpy_bc`` /
``d3rlpy_cql``), their summary (``rgvlm.evaluation.summarize``), the conversion, the
settings of each algorithm, losses and wall times (training updates per second).

d3rlpy is not a project dependency; install it with the commands in
``rgvlm.peer.d3rlpy_baseline.INSTALL_COMMANDS``.

    python -m experiments.d3rlpy_peer --data outputs/experiments/data/19c918a080f7 --steps 2000
    python -m experiments.d3rlpy_peer --data /tmp/tiny --steps 20 --seeds 0 --episodes 2 --ks 1 --out /tmp/peer.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from experiments.cli import command
from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.data import load_dataset
from rgvlm.envs.seeds import fresh_seed, validation_seed
from rgvlm.evaluation import EvalEpisode, summarize
from rgvlm.params import EnvConfig
from rgvlm.peer.d3rlpy_baseline import (
    INSTALL_COMMANDS,
    SAMPLING,
    Conversion,
    require_d3rlpy,
    to_mdp_dataset,
    train_and_evaluate,
)
from rgvlm.rl.missions import MissionEmbedder


def reward_set(data, name: str, rewards_dir: Path) -> np.ndarray:
    """The per-transition rewards ``name`` (sparse = the dataset's task reward)."""
    if name == "sparse":
        return np.asarray(data.rewards, dtype=np.float32)
    if name == "oracle":
        from rgvlm.rewards import oracle_rewards

        return np.asarray(oracle_rewards(data).rewards, dtype=np.float32)
    from rgvlm.rewards import load_rewards

    return np.asarray(load_rewards(rewards_dir, name).rewards, dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="dataset directory (relative to the repository root or cwd)")
    parser.add_argument("--algos", nargs="+", default=["bc", "cql"], choices=["bc", "cql"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--steps", type=int, default=2000, help="gradient updates per run")
    parser.add_argument("--log-every", type=int, default=None, help="updates per loss record (default: --steps)")
    parser.add_argument("--split", choices=["validation", "fresh"], default="validation")
    parser.add_argument("--eval-seed", type=int, default=0, help="base seed of the validation / fresh layouts")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per k")
    parser.add_argument("--temperature", type=float, default=1.0, help="of the sampled evaluation")
    parser.add_argument("--reward-set", default="sparse",
                        help="sparse, oracle, or a reward set saved under --rewards-dir")
    parser.add_argument("--rewards-dir", default=str(paths.REWARDS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="hidden units of d3rlpy's MLP")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gamma", type=float, default=0.97, help="DiscreteCQL discount")
    parser.add_argument("--alpha", type=float, default=1.0, help="DiscreteCQL conservative weight")
    parser.add_argument("--target-update-interval", type=int, default=200, help="DiscreteCQL hard target copy")
    parser.add_argument("--bc-beta", type=float, default=0.5, help="DiscreteBC logit penalty (d3rlpy default)")
    parser.add_argument("--mission-dim", type=int, default=None,
                        help="project each clause embedding on this many singular vectors (default: full 384)")
    parser.add_argument("--obs-dtype", choices=["float32", "float16"], default="float16",
                        help="storage of the converted observations (float16: half the memory, features exact)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: two threads on a busy 2-core CPU were 20x slower)")
    parser.add_argument("--out", default=str(paths.REPORTS / "tuning" / "d3rlpy_peer.json"))
    args = parser.parse_args(argv)

    d3rlpy = require_d3rlpy()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = Path(args.data)
    if not data_dir.is_absolute() and not data_dir.exists():
        data_dir = paths.ROOT / data_dir
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    data = load_dataset(data_dir)
    env_config = EnvConfig(**data.manifest["env"])
    embedder = MissionEmbedder(device="cpu")
    table = embedder.embed(data.missions)
    rewards = reward_set(data, args.reward_set, Path(args.rewards_dir))
    conversion = Conversion.for_dataset(data, table, "entities", args.mission_dim, args.obs_dtype)
    dataset = to_mdp_dataset(data, table, rewards=rewards, conversion=conversion)
    seconds["load_and_convert"] = round(time.perf_counter() - started, 2)
    print(f"converted {data.num_transitions} transitions of {len(data.episodes)} episodes into "
          f"{conversion.observation_dim}-dim observations in {seconds['load_and_convert']:.1f}s", flush=True)

    seed_of = validation_seed if args.split == "validation" else fresh_seed
    episodes = [EvalEpisode(k, args.split, seed_of(args.eval_seed, i)) for k in args.ks for i in range(args.episodes)]
    policies = {"greedy": 0.0, "sampled": args.temperature}
    hyper = dict(batch_size=args.batch_size, hidden_units=args.hidden, learning_rate=args.lr, gamma=args.gamma,
                 alpha=args.alpha, target_update_interval=args.target_update_interval, bc_beta=args.bc_beta,
                 log_every=args.log_every)
    records, runs, settings, timed = train_and_evaluate(dataset, conversion, args.algos, args.seeds, args.steps, hyper,
                                                        episodes, env_config, embedder.embed, policies, args.eval_seed)
    seconds.update(timed)
    seconds["total"] = round(time.perf_counter() - started, 2)

    frame = pd.DataFrame(records)
    summary = summarize(frame, samples=2000, seed=0)
    updates = {m: round(float(np.mean([r["updates_per_second"] for r in runs if r["reward_set"] == m])), 2)
               for m in settings}
    write_json_atomic(Path(args.out), {
        "command": command("d3rlpy_peer", argv),
        "d3rlpy": d3rlpy.__version__,
        "install": list(INSTALL_COMMANDS),
        "split": args.split + (" (rgvlm.envs.seeds.validation_seed; never the evaluation seeds)"
                               if args.split == "validation" else " (rgvlm.envs.seeds.fresh_seed)"),
        "dataset": {"path": str(data_dir), "env": data.manifest["env"], "dataset": data.manifest.get("dataset"),
                    "num_episodes": len(data.episodes), "num_transitions": data.num_transitions},
        "reward_set": args.reward_set,
        "conversion": conversion.describe(),
        "policies": policies,
        "sampling": {f"d3rlpy_{a}": SAMPLING[a] for a in args.algos},
        "settings": settings,
        "torch_threads": torch.get_num_threads(),
        "seconds": seconds,
        "train_updates_per_second": updates,
        "runs": runs,
        "summary": summary.to_dict("records"),
        "records": records,
    })
    print(summary.pivot_table(index=["policy", "reward_set"], columns="k", values="completion_mean").round(3).to_string())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
