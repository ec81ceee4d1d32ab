"""Why does (or doesn't) a dense reward help? Training-length and hyper-parameter checks on the
VALIDATION split, never on the evaluation seeds.

Trains one multi-run stack per variant (the ``train`` section of ``params.yaml`` with
``--set`` overrides) on reward sets already written by the rewards stage
(``outputs/rewards/``), with training seeds disjoint from the pipeline's, and rolls every run
out every ``--eval-every`` updates on validation layouts (``rgvlm.envs.seeds.validation_seed``:
neither in the dataset nor among the fresh evaluation seeds). Writes
``reports/tuning/<name>.json``: completion per (variant, reward set, step, k), mean over
training seeds with a bootstrap 95% interval. Every stack is built as the pipeline's ``train`` stage
builds its own (rgvlm.rl.training: rewards scaled, the critic diagnostic's episodes held out, the
variant's n-step targets and mission view).

    python -m experiments.tune_iql --name length --steps 6000 --eval-every 2000
    python -m experiments.tune_iql --name temperature --variant tau=0.9,beta=10 --variant tau=0.7,beta=3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from experiments.cli import add_params_options, checked_params, command
from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.data import load_dataset
from rgvlm.envs.seeds import validation_seed
from rgvlm.evaluation import EvalEpisode, summarize
from rgvlm.evaluation.stack import evaluate_stack
from rgvlm.params import EnvConfig, train_config
from rgvlm.rewards import load_rewards
from rgvlm.rl.training import TrainingJob, iql_config_for


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
    parser.add_argument("--data", type=Path, default=paths.DATA, help="the dataset the reward sets label")
    parser.add_argument("--rewards", type=Path, default=paths.REWARDS, help="the rewards stage's output")
    parser.add_argument("--out", type=Path, default=paths.REPORTS / "tuning", help="where <name>.json goes")
    add_params_options(parser)
    args = parser.parse_args(argv)
    params = checked_params(args)

    data = load_dataset(args.data)
    env_config = EnvConfig(**data.manifest["env"])
    rewards = {name: load_rewards(args.rewards, name).rewards for name in args.reward_sets}
    episodes = [EvalEpisode(k, "validation", validation_seed(0, i)) for k in args.ks for i in range(args.episodes)]
    base = params["train"]
    records, timings = [], {}
    for variant_text in args.variant or [""]:
        overrides = parse_variant(variant_text)
        train = train_config({**base, **overrides})
        config = iql_config_for(data, train.iql)
        stack = TrainingJob(data, rewards, args.seeds, config, probe=False).build()
        started = time.perf_counter()
        while stack.step < args.steps:
            stack.train(min((stack.step // args.eval_every + 1) * args.eval_every, args.steps), progress=False)
            records += evaluate_stack(stack, episodes, env_config,
                                      tags={"variant": variant_text or "base", "updates": stack.step})
            print(f"{variant_text or 'base'}: step {stack.step}, {time.perf_counter() - started:.0f}s", flush=True)
        timings[variant_text or "base"] = round(time.perf_counter() - started, 1)
    frame = pd.DataFrame(records)
    tables = []
    for (variant, updates), group in frame.groupby(["variant", "updates"]):
        summary = summarize(group, samples=2000, seed=0)
        tables.append(summary.assign(variant=variant, updates=int(updates)))
    summary = pd.concat(tables, ignore_index=True)
    write_json_atomic(args.out / f"{args.name}.json", {
        "command": command("tune_iql", argv),
        "split": "validation (rgvlm.envs.seeds.validation_seed; never the evaluation seeds)",
        "training_seeds": args.seeds, "base_train": base, "seconds": timings,
        "summary": summary.to_dict("records"),
    })
    print(summary.pivot_table(index=["variant", "updates", "reward_set"], columns="k", values="completion_mean").round(3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
