"""Does the agent learn, and which levers matter? Measured on the VALIDATION split only.

Builds (once, cached under ``outputs/experiments/data/``) an offline dataset with the given
``env``/``dataset`` overrides of ``params.yaml``, computes the reward sets that need no
labelling stage (``sparse``, ``oracle``) plus the behaviour-cloning baselines (``bc``: all
data; ``bc_success``: successful episodes only), trains one multi-run stack per variant of
the ``train`` section, and rolls every run out every ``--eval-every`` updates on validation
layouts (``rgvlm.envs.seeds.validation_seed``: neither in the dataset nor among the
evaluation seeds), greedy and sampled. The critic diagnostic (``rgvlm.rl.diagnostics``) is
logged at every evaluation. Writes ``reports/tuning/<name>.json``.

    python -m experiments.learning --name encoder --variant encoder=grid --variant encoder=entities
    python -m experiments.learning --name data --env room_size=5 --dataset episodes_per_k=600
    python -m experiments.learning --name mix --dataset mixture.expert=0.5,mixture.noisy=0.3,mixture.partial=0.2
    python -m experiments.learning --name beta -S train.beta=30 -S dataset.mixture.expert=0.5

``-S KEY=VALUE`` (repeatable) changes params.yaml (or the ``--profile``) as ``dvc exp run -S`` does
(rgvlm.params.apply_overrides: the same syntax, ``+KEY=VALUE`` adds a key, ``~KEY`` removes one);
the --env/--dataset/--variant overrides apply on top. The parameters are checked section by section (rgvlm.sections) before
any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd
import torch

from experiments.cli import add_params_options, build_dataset, checked_params, command, parse_overrides
from rgvlm import paths
from rgvlm.atomic import write_bytes_atomic, write_json_atomic
from rgvlm.data import load_dataset
from rgvlm.envs.seeds import validation_seed
from rgvlm.evaluation import EvalEpisode, summarize
from rgvlm.evaluation.chaining import chaining_tables, diagnose
from rgvlm.evaluation.paired import decide, paired_differences, per_layout_table
from rgvlm.evaluation.stack import evaluate_stack
from rgvlm.params import EnvConfig, resolve_device, train_config
from rgvlm.rewards import oracle_rewards, sparse_rewards
from rgvlm.rl.iql import save_state_atomic
from rgvlm.rl.runs import run_paths
from rgvlm.rl.training import Stack, TrainingJob, baseline_weights, iql_config_for

#: The reward sets that need no labelling stage, and the behaviour-cloning baselines.
REWARDS = {"sparse": sparse_rewards, "oracle": oracle_rewards}
BASELINES = ("bc", "bc_success")


def save_runs(models_dir: Path, stack: Stack, data_dir: Path) -> None:
    """Every run's final state as the pipeline's train stage exports it, plus a ``runs.json``
    naming the runs, their IQL config and the dataset they were trained on."""
    for r, (name, seed) in enumerate(stack.runs):
        checkpoint, _, _ = run_paths(models_dir, name, seed)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_state_atomic(stack.run_state(r), checkpoint)
    write_json_atomic(models_dir / "runs.json", {"runs": [list(run) for run in stack.runs],
                                                 "iql": dataclasses.asdict(stack.config), "data": str(data_dir)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="output name under reports/tuning/")
    parser.add_argument("--env", default="", help="overrides of the env section, k=v,...")
    parser.add_argument("--dataset", default="", help="overrides of the dataset section, k=v,...")
    parser.add_argument("--reward-sets", "--methods", dest="reward_sets", nargs="+",  # --methods: the old name
                        default=["sparse", "oracle", "bc", "bc_success"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101], help="training seeds (not the pipeline's)")
    parser.add_argument("--variant", action="append", default=[], help="overrides of the train section, k=v,...")
    add_params_options(parser)  # --profile, -S: applied before --env/--dataset/--variant
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--episodes", type=int, default=30, help="validation episodes per k")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0],
                        help="of the sampled evaluations (policy 'sampled' at 1.0, 'sampled@T' otherwise)")
    parser.add_argument("--out", type=Path, default=paths.REPORTS / "tuning", help="where <name>.json goes")
    parser.add_argument("--data-root", type=Path, default=paths.OUTPUTS / "experiments" / "data",
                        help="the cache of collected datasets")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="once a variant has trained this many seconds, evaluate it where it is and stop "
                             "(the JSON says where each stopped); for a device lease of fixed length")
    parser.add_argument("--save-models", type=Path, default=None,
                        help="write every run's final networks to DIR/<variant>/ in the pipeline's layout "
                             "(for python -m experiments.action_ranking)")
    parser.add_argument("--diagnose", action="store_true",
                        help="at the last evaluation, replay every episode to say where the policy stops "
                             "(rgvlm.evaluation.chaining: success per sub-task kind and position, stalls)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.reward_sets) - set(REWARDS) - set(BASELINES))
    if unknown:
        raise SystemExit(f"--reward-sets {' '.join(unknown)}: expected some of {', '.join([*REWARDS, *BASELINES])}")
    params = checked_params(args)  # params.yaml or --profile with the -S changes, checked before any work

    torch.set_num_threads(max(1, torch.get_num_threads()))
    data_dir = build_dataset(parse_overrides(args.env), parse_overrides(args.dataset), args.data_root, params)
    data = load_dataset(data_dir)
    env_config = EnvConfig(**data.manifest["env"])
    # A baseline's (unused) critic trains on the sparse reward.
    rewards = {name: (REWARDS[name] if name in REWARDS else sparse_rewards)(data).rewards for name in args.reward_sets}
    baselines = {name: baseline_weights(data, name) for name in args.reward_sets if name in BASELINES}
    episodes = [EvalEpisode(k, "validation", validation_seed(0, i)) for k in args.ks for i in range(args.episodes)]
    temperatures = {"greedy": 0.0, **{"sampled" if t == 1.0 else f"sampled@{t:g}": t for t in args.temperatures}}
    base = params["train"]
    records, diagnostics, timings = [], [], {}
    for variant_text in args.variant or [""]:
        variant = variant_text or "base"
        train = train_config({**base, **parse_overrides(variant_text)})
        config = iql_config_for(data, train.iql)
        device = resolve_device(train.device)  # the train section's: auto = CUDA where there is a GPU
        stack = TrainingJob(data, rewards, args.seeds, config, device, baselines=baselines, compile=train.compile,
                            cuda_graphs=train.cuda_graphs).build()
        started = time.perf_counter()

        def out_of_time(step: int, started: float = started) -> bool:  # a true return stops training
            return args.time_limit_s is not None and time.perf_counter() - started >= args.time_limit_s

        while stack.step < args.steps:
            stack.train(min((stack.step // args.eval_every + 1) * args.eval_every, args.steps), on_step=out_of_time,
                        progress=False)
            stopped = out_of_time(stack.step)
            train_s = time.perf_counter() - started
            probed = stack.critic_diagnostics()
            last = stack.step >= args.steps or stopped
            records += evaluate_stack(stack, episodes, env_config, temperatures, seed=stack.step,
                                      record_actions=args.diagnose and last,
                                      tags={"variant": variant, "updates": stack.step})
            diagnostics += [{"variant": variant, "reward_set": name, "run_seed": seed, "updates": stack.step, **run}
                            for (name, seed), run in zip(stack.runs, probed, strict=True)]
            frame = pd.DataFrame([r for r in records if r["variant"] == variant and r["updates"] == stack.step])
            print(f"{variant}: step {stack.step}, train {train_s:.0f}s, total {time.perf_counter() - started:.0f}s")
            print(frame.pivot_table(index=["policy", "reward_set"], columns="k", values="completion").round(2).to_string())
            if probed[0]:
                print(pd.DataFrame(diagnostics[-len(stack.runs):]).groupby("reward_set")[list(probed[0])].mean()
                      .round(3).to_string(), flush=True)
            if stopped:
                print(f"{variant}: time limit of {args.time_limit_s:g}s reached at step {stack.step}", flush=True)
                break
        timings[variant] = {"seconds": round(time.perf_counter() - started, 1), "updates": stack.step,
                            "device": str(device)}
        if args.save_models is not None:
            save_runs(args.save_models / variant, stack, data_dir)
    chaining = {}
    if args.diagnose:  # the last evaluation's episodes carry their actions
        replayed = [r for r in records if "actions" in r]
        rows = diagnose(replayed, env_config, keys=("variant", "reward_set", "run_seed", "policy"))
        chaining = {name: table.to_dict("records") for name, table in
                    chaining_tables(rows, ["variant", "policy", "reward_set"]).items()}
        for name, table in chaining.items():
            print(name, pd.DataFrame(table).round(3).to_string(), sep="\n")
        for r in replayed:
            del r["actions"]
    frame = pd.DataFrame(records)
    tables = []
    for (variant, updates, policy), group in frame.groupby(["variant", "updates", "policy"]):
        tables.append(summarize(group, samples=2000, seed=0).assign(variant=variant, updates=int(updates), policy=policy))
    summary = pd.concat(tables, ignore_index=True)
    # Every row, every training seed and every k met the same validation layouts: compare the rows
    # of each variant's last evaluation paired by layout (rgvlm.evaluation.paired), Holm over the
    # variant's family, and keep the per-layout cells so any other contrast can be recomputed.
    final = frame[frame["updates"] == frame.groupby("variant")["updates"].transform("max")]
    by_variant = list(final.groupby("variant"))
    paired = pd.concat([decide(paired_differences(group, measure="subtasks", seed=0)).assign(variant=variant)
                        for variant, group in by_variant], ignore_index=True)
    layouts = pd.concat([per_layout_table(group).assign(variant=variant) for variant, group in by_variant],
                        ignore_index=True)
    write_bytes_atomic(args.out / f"{args.name}_per_layout.csv",
                       layouts.to_csv(index=False, float_format="%.6g").encode())
    write_json_atomic(args.out / f"{args.name}.json", {
        "command": command("learning", argv),
        "split": "validation (rgvlm.envs.seeds.validation_seed; never the evaluation seeds)",
        "dataset": {k: data.manifest[k] for k in ("env", "dataset", "num_episodes", "num_transitions")},
        "training_seeds": args.seeds, "base_train": base, "seconds": timings,
        "summary": summary.to_dict("records"), "critic": diagnostics, "chaining": chaining,
        "paired": paired.to_dict("records"), "per_layout": f"{args.name}_per_layout.csv",
    })
    print(summary.pivot_table(index=["variant", "updates", "policy", "reward_set"], columns="k",
                              values="completion_mean").round(3).to_string())
    if not paired.empty:
        paired["cell"] = paired.apply(lambda r: f"{r.difference:+.2f} [{r.low:+.2f},{r.high:+.2f}]"
                                      f"{'*' if r.verdict != 'not resolved' else ''}", axis=1)
        print("paired by layout, sub-tasks done (* resolved, Holm over the variant's tests)")
        print(paired.pivot_table(index=["variant", "policy", "row", "reference"], columns="k", values="cell",
                                 aggfunc="first").to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
