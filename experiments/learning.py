"""Does the agent learn, and which levers matter? Measured on the VALIDATION split only.

Builds (once, cached under ``outputs/experiments/data/``) an offline dataset with the given
``env``/``dataset`` overrides of ``params.yaml``, computes the reward sets that need no
labelling stage (``sparse``, ``oracle``) plus the behaviour-cloning baselines (``bc``: all
data; ``bc_success``: successful episodes only), trains one multi-run stack per variant of
the ``train`` section, and rolls every run out every ``--eval-every`` updates on validation
layouts (``rgvlm.envs.seeds.validation_seed``: neither in the dataset nor among the
evaluation seeds), greedy and sampled. The critic diagnostic (``rgvlm.rl.diagnostics``) is
logged at every evaluation. Writes ``reports/tuning/<name>.json``.

    python experiments/learning.py --name encoder --variant encoder=grid --variant encoder=entities
    python experiments/learning.py --name data --env room_size=5 --dataset episodes_per_k=600
    python experiments/learning.py --name mix --dataset mixture.expert=0.5,mixture.noisy=0.3,mixture.partial=0.2
    python experiments/learning.py --name beta -S train.beta=30 -S dataset.mixture.expert=0.5

``-S KEY=VALUE`` (repeatable) changes params.yaml as ``dvc exp run -S`` does (rgvlm.params.apply_overrides: the
same syntax, ``+KEY=VALUE`` adds a key, ``~KEY`` removes one); the --env/--dataset/--variant
overrides apply on top. The parameters are checked section by section (rgvlm.sections) before
any work.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgvlm import paths  # noqa: E402
from rgvlm.data import load_dataset  # noqa: E402
from rgvlm.data.storage import write_json_atomic  # noqa: E402
from rgvlm.envs.seeds import validation_seed  # noqa: E402
from rgvlm.evaluation import EvalEpisode, rollout, summarize  # noqa: E402
from rgvlm.evaluation.chaining import chaining_tables, diagnose  # noqa: E402
from rgvlm.params import (  # noqa: E402
    EnvConfig,
    apply_overrides,  # noqa: E402
    load_params,
    resolve_device,
    train_config,
)
from rgvlm.rewards import oracle_rewards, sparse_rewards  # noqa: E402
from rgvlm.rl.diagnostics import CriticProbe, holdout_mask  # noqa: E402
from rgvlm.rl.iql import save_state_atomic  # noqa: E402
from rgvlm.rl.missions import mission_embedder  # noqa: E402
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL, StackedPolicy  # noqa: E402
from rgvlm.rl.runs import iql_config_for, learner_missions, run_paths, scale_rewards  # noqa: E402
from rgvlm.sections import check_params  # noqa: E402


def parse_overrides(text: str) -> dict:
    """``"tau=0.9,encoder=entities"`` -> ``{"tau": 0.9, "encoder": "entities"}`` (YAML scalars)."""
    return {key.strip(): yaml.safe_load(value) for key, _, value in
            (item.partition("=") for item in filter(None, text.split(",")))}


def build_dataset(env: dict, dataset: dict, root: Path = paths.OUTPUTS / "experiments" / "data",
                  params: dict | None = None) -> Path:
    """The dataset for these overrides of ``params`` (default: params.yaml), collected once under
    ``root`` and cached by their hash."""
    params = load_params() if params is None else copy.deepcopy(params)
    params["env"].update(env)
    for key, value in dataset.items():  # dotted keys reach into nested sections: mixture.expert=0.5
        *parents, leaf = key.split(".")
        section = params["dataset"]
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    key = hashlib.sha256(json.dumps([params["env"], params["dataset"]], sort_keys=True).encode()).hexdigest()[:12]
    out = root / key
    if not (out / "manifest.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        params_file = out.with_suffix(".params.yaml")
        params_file.write_text(yaml.safe_dump({"env": params["env"], "dataset": params["dataset"]}))
        subprocess.run([sys.executable, "-m", "rgvlm.data", "collect", "--params", str(params_file), "--out", str(out)],
                       check=True, cwd=ROOT)
    return out


def save_runs(models_dir: Path, trainer: MultiRunIQL, runs: list[tuple[str, int]], config, data_dir: Path) -> None:
    """Every run's final state as the pipeline's train stage exports it, plus a ``runs.json``
    naming the runs, their IQL config and the dataset they were trained on."""
    for r, (name, seed) in enumerate(runs):
        checkpoint, _, _ = run_paths(models_dir, name, seed)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_state_atomic(trainer.run_state(r), checkpoint)
    write_json_atomic(models_dir / "runs.json", {"runs": runs, "iql": dataclasses.asdict(config), "data": str(data_dir)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="output name under reports/tuning/")
    parser.add_argument("--env", default="", help="overrides of the env section, k=v,...")
    parser.add_argument("--dataset", default="", help="overrides of the dataset section, k=v,...")
    parser.add_argument("--reward-sets", "--methods", dest="reward_sets", nargs="+",  # --methods: the old name
                        default=["sparse", "oracle", "bc", "bc_success"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101], help="training seeds (not the pipeline's)")
    parser.add_argument("--variant", action="append", default=[], help="overrides of the train section, k=v,...")
    parser.add_argument("-S", "--set-param", dest="set_params", action="append", default=[], metavar="KEY=VALUE",
                        help="a change to params.yaml in the syntax of `dvc exp run -S` (e.g. -S train.beta=30 "
                             "-S dataset.mixture.expert=0.5); repeatable, applied before --env/--dataset/--variant")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--episodes", type=int, default=30, help="validation episodes per k")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0],
                        help="of the sampled evaluations (policy 'sampled' at 1.0, 'sampled@T' otherwise)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "tuning", help="where <name>.json goes")
    parser.add_argument("--data-root", type=Path, default=paths.OUTPUTS / "experiments" / "data",
                        help="the cache of collected datasets")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="once a variant has trained this many seconds, evaluate it where it is and stop "
                             "(the JSON says where each stopped); for a device lease of fixed length")
    parser.add_argument("--save-models", type=Path, default=None,
                        help="write every run's final networks to DIR/<variant>/ in the pipeline's layout "
                             "(for experiments/action_ranking.py)")
    parser.add_argument("--diagnose", action="store_true",
                        help="at the last evaluation, replay every episode to say where the policy stops "
                             "(rgvlm.evaluation.chaining: success per sub-task kind and position, stalls)")
    args = parser.parse_args(argv)
    # params.yaml with the -S changes, checked by every section's checker before any work.
    params = apply_overrides(load_params(), args.set_params)
    check_params(params)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    data_dir = build_dataset(parse_overrides(args.env), parse_overrides(args.dataset), args.data_root, params)
    data = load_dataset(data_dir)
    env_config = EnvConfig(**data.manifest["env"])
    success = np.repeat([float(e["success"]) for e in data.episodes], [e["length"] for e in data.episodes])
    rewards = {"sparse": sparse_rewards(data).rewards, "oracle": oracle_rewards(data).rewards}
    bc_rows = {"bc": 0, "bc_success": 1}  # rows of DeviceTransitions.bc_weights
    episodes = [EvalEpisode(k, "validation", validation_seed(0, i)) for k in args.ks for i in range(args.episodes)]
    runs = [(name, seed) for name in args.reward_sets for seed in args.seeds]
    reward_names = list(rewards)
    base = params["train"]
    records, diagnostics, timings = [], [], {}
    for variant_text in args.variant or [""]:
        variant = variant_text or "base"
        train = train_config({**base, **parse_overrides(variant_text)})
        config = iql_config_for(data, train.iql)
        device = resolve_device(train.device)  # the train section's: auto = CUDA where there is a GPU
        embedder = mission_embedder(config.mission_encoder)  # as the variant's networks read missions
        table, observation_rows = learner_missions(data, config)
        holdout = holdout_mask(data, config.holdout_fraction)
        scaled = [scale_rewards(data, r, config.reward_scale, config.gamma) for r in rewards.values()]
        transitions = DeviceTransitions(data, scaled, table, device, bc_weights=[success], holdout=holdout,
                                        n_step=config.n_step, gamma=config.gamma, observation_missions=observation_rows)
        # BC runs train their (unused) critic on the sparse reward.
        trainer = MultiRunIQL(config, [seed for _, seed in runs],
                              [reward_names.index(n if n in rewards else "sparse") for n, _ in runs],
                              bc_rows=[bc_rows.get(n) for n, _ in runs], device=device,
                              compile=train.compile, cuda_graphs=train.cuda_graphs)
        probe = CriticProbe(data, transitions, scaled, holdout, config.gamma)
        started = time.perf_counter()
        while trainer.step < args.steps:
            trainer.train_step(transitions)
            out_of_time = args.time_limit_s is not None and time.perf_counter() - started >= args.time_limit_s
            if trainer.step % args.eval_every == 0 or trainer.step == args.steps or out_of_time:
                train_s = time.perf_counter() - started
                probed = {k: v.tolist() for k, v in probe(trainer).items()}
                states = [trainer.run_state(r)["policy"] for r in range(len(runs))]
                policies = [("greedy", 0.0)] + [("sampled" if t == 1.0 else f"sampled@{t:g}", t) for t in args.temperatures]
                for policy_name, temperature in policies:
                    policy = StackedPolicy(config, states, device=device, temperature=temperature, seed=trainer.step)
                    last = trainer.step >= args.steps or out_of_time
                    per_run = rollout(policy, episodes, env_config, embedder.embed, num_runs=len(runs),
                                      record_actions=args.diagnose and last, mission_view=config.mission_view)
                    for (name, seed), run_records in zip(runs, per_run, strict=True):
                        records += [{**r, "reward_set": name, "run_seed": seed, "variant": variant, "policy": policy_name,
                                     "updates": trainer.step} for r in run_records]
                diagnostics += [{"variant": variant, "reward_set": name, "run_seed": seed, "updates": trainer.step,
                                 **{k: v[r] for k, v in probed.items()}} for r, (name, seed) in enumerate(runs)]
                frame = pd.DataFrame([r for r in records if r["variant"] == variant and r["updates"] == trainer.step])
                print(f"{variant}: step {trainer.step}, train {train_s:.0f}s, total {time.perf_counter() - started:.0f}s")
                print(frame.pivot_table(index=["policy", "reward_set"], columns="k", values="completion").round(2).to_string())
                print(pd.DataFrame(diagnostics[-len(runs):]).groupby("reward_set")[list(probed)].mean().round(3).to_string(),
                      flush=True)
                if out_of_time:
                    print(f"{variant}: time limit of {args.time_limit_s:g}s reached at step {trainer.step}", flush=True)
                    break
        timings[variant] = {"seconds": round(time.perf_counter() - started, 1), "updates": trainer.step,
                            "device": str(device)}
        if args.save_models is not None:
            save_runs(args.save_models / variant, trainer, runs, config, data_dir)
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
    write_json_atomic(args.out / f"{args.name}.json", {
        "command": "python experiments/learning.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "split": "validation (rgvlm.envs.seeds.validation_seed; never the evaluation seeds)",
        "dataset": {k: data.manifest[k] for k in ("env", "dataset", "num_episodes", "num_transitions")},
        "training_seeds": args.seeds, "base_train": base, "seconds": timings,
        "summary": summary.to_dict("records"), "critic": diagnostics, "chaining": chaining,
    })
    print(summary.pivot_table(index=["variant", "updates", "policy", "reward_set"], columns="k",
                              values="completion_mean").round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
