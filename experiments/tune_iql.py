"""Why does (or doesn't) a dense reward help? Training-length and hyper-parameter checks on the
VALIDATION split, never on the evaluation seeds.

Trains one multi-run stack per variant (the ``train`` section of ``params.yaml`` with
``--set`` overrides) on reward sets already written by the rewards stage
(``outputs/rewards/``), with training seeds disjoint from the pipeline's, and rolls every run
out every ``--eval-every`` updates on validation layouts (``rgvlm.envs.seeds.validation_seed``:
neither in the dataset nor among the fresh evaluation seeds). Writes
``reports/tuning/<name>.json``: completion per (variant, reward set, step, k), mean over
training seeds with a bootstrap 95% interval.

    python experiments/tune_iql.py --name length --steps 6000 --eval-every 2000
    python experiments/tune_iql.py --name temperature --variant tau=0.9,beta=10 --variant tau=0.7,beta=3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgvlm import paths  # noqa: E402
from rgvlm.data import load_dataset  # noqa: E402
from rgvlm.data.storage import write_json_atomic  # noqa: E402
from rgvlm.envs.seeds import validation_seed  # noqa: E402
from rgvlm.evaluation import EvalEpisode, rollout, summarize  # noqa: E402
from rgvlm.params import EnvConfig, load_params, train_config  # noqa: E402
from rgvlm.rewards import load_rewards  # noqa: E402
from rgvlm.rl.missions import mission_embedder  # noqa: E402
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL, StackedPolicy  # noqa: E402
from rgvlm.rl.runs import iql_config_for  # noqa: E402


def parse_variant(text: str) -> dict:
    """``"tau=0.9,beta=10"`` -> ``{"tau": 0.9, "beta": 10.0}`` (ints stay ints)."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="output name under reports/tuning/")
    parser.add_argument("--reward-sets", nargs="+", default=["sparse", "oracle", "rg_vlm", "sparse+rg_vlm@1"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101], help="training seeds (not 0..4)")
    parser.add_argument("--variant", action="append", default=[], help="overrides of the train section, k=v,...")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--episodes", type=int, default=10, help="validation episodes per k")
    args = parser.parse_args(argv)

    data = load_dataset(paths.DATA)
    env_config = EnvConfig(**data.manifest["env"])
    rewards = [load_rewards(paths.REWARDS, name).rewards for name in args.reward_sets]
    episodes = [EvalEpisode(k, "validation", validation_seed(0, i)) for k in args.ks for i in range(args.episodes)]
    runs = [(name, seed) for name in args.reward_sets for seed in args.seeds]
    base = load_params()["train"]
    records, timings = [], {}
    for variant_text in args.variant or [""]:
        overrides = parse_variant(variant_text)
        train = train_config({**base, **overrides})
        config = iql_config_for(data, train.iql)
        embedder = mission_embedder(config.mission_encoder)  # as the variant's networks read missions
        transitions = DeviceTransitions(data, rewards, torch.as_tensor(embedder.embed(data.missions)), "cpu")
        trainer = MultiRunIQL(config, [seed for _, seed in runs], [args.reward_sets.index(n) for n, _ in runs])
        started = time.perf_counter()
        while trainer.step < args.steps:
            trainer.update(trainer.sample(transitions))
            if trainer.step % args.eval_every == 0 or trainer.step == args.steps:
                policy = StackedPolicy(config, [trainer.run_state(r)["policy"] for r in range(len(runs))])
                per_run = rollout(policy, episodes, env_config, embedder.embed, num_runs=len(runs))
                for (name, seed), run_records in zip(runs, per_run, strict=True):
                    records += [{**r, "reward_set": name, "run_seed": seed, "variant": variant_text or "base",
                                 "updates": trainer.step} for r in run_records]
                print(f"{variant_text or 'base'}: step {trainer.step}, "
                      f"{time.perf_counter() - started:.0f}s", flush=True)
        timings[variant_text or "base"] = round(time.perf_counter() - started, 1)
    frame = pd.DataFrame(records)
    tables = []
    for (variant, updates), group in frame.groupby(["variant", "updates"]):
        summary = summarize(group, samples=2000, seed=0)
        tables.append(summary.assign(variant=variant, updates=int(updates)))
    summary = pd.concat(tables, ignore_index=True)
    write_json_atomic(ROOT / "reports" / "tuning" / f"{args.name}.json", {
        "command": "python experiments/tune_iql.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "split": "validation (rgvlm.envs.seeds.validation_seed; never the evaluation seeds)",
        "training_seeds": args.seeds, "base_train": base, "seconds": timings,
        "summary": summary.to_dict("records"),
    })
    print(summary.pivot_table(index=["variant", "updates", "reward_set"], columns="k", values="completion_mean").round(3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
