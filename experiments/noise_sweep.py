"""How good must an LVLM's labels be before they help? Label noise -> label quality -> policy.

For each noise level of the scripted annotator (``score_sd``, ``misattribution``), relabels the
pipeline's dataset (``data/``) with each of ``--methods`` (default RG-VLM and gvl; any
registered method that asks the LVLM, through its registry entry and its params section)
through the scripted annotator (its own response cache per level under
``outputs/experiments/noise_sweep/``), measures the labels' quality (AUROC and Spearman against
the privileged ground truth; VOC, which needs none), fuses RG-VLM's with the sparse reward
(``--lam``), then trains every reward set with the pipeline's ``train`` settings for ``--seeds``
in one stack, and rolls every run out on the fresh evaluation layouts. Writes
``reports/tuning/noise_sweep.json`` and ``reports/tuning/noise_sweep.png`` (linked from the
report). The scripted annotator is not an LVLM: this measures what label quality does to the
policy, not any LVLM.

    python -m experiments.noise_sweep --levels 0:0 1:0.1 2:0.3 4:0.5 --seeds 0 1 2 --episodes 30 --temperature 0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd

from experiments.cli import add_params_options, checked_params, command
from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.data import load_dataset
from rgvlm.evaluation import evaluation_episodes, summarize
from rgvlm.evaluation.label_quality import label_quality
from rgvlm.evaluation.stack import evaluate_stack
from rgvlm.params import EnvConfig, labelling_config, train_config
from rgvlm.plots import METRIC_LABELS, save_figure
from rgvlm.rewards import fuse, sparse_rewards
from rgvlm.rewards.registry import LVLM_SECTION, METHODS, PAPER_METHOD
from rgvlm.rl.training import TrainingJob, iql_config_for
from rgvlm.vlm import cached_clients, failure_policy


def parse_level(text: str) -> tuple[float, float]:
    """``"2:0.3"`` -> (score_sd 2.0, misattribution 0.3)."""
    sd, _, mis = text.partition(":")
    return float(sd), float(mis)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", nargs="+", default=["0:0", "1:0.1", "2:0.3", "4:0.5"],
                        help="score_sd:misattribution of the scripted annotator")
    parser.add_argument("--methods", nargs="+", default=[PAPER_METHOD, "gvl"],
                        choices=[name for name, method in METHODS.items() if method.uses_lvlm],
                        help="labelling methods to relabel at every level")
    parser.add_argument("--lam", type=float, default=1.0, help="fusion weight of Sparse + RG-VLM")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="updates per run (default: train.num_steps)")
    parser.add_argument("--episodes", type=int, default=30, help="fresh evaluation episodes per k")
    parser.add_argument("--temperature", type=float, default=1.0, help="of the (sampled) evaluation policy")
    parser.add_argument("--data", type=Path, default=paths.DATA, help="the dataset to relabel")
    parser.add_argument("--cache", type=Path, default=paths.OUTPUTS / "experiments" / "noise_sweep",
                        help="the scripted annotator's response caches, one per level")
    parser.add_argument("--out", type=Path, default=paths.REPORTS / "tuning",
                        help="where noise_sweep.json and noise_sweep.png go (the report links them from reports/tuning)")
    add_params_options(parser)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    params = checked_params(args)
    data = load_dataset(args.data)
    sparse = sparse_rewards(data)
    levels = [parse_level(text) for text in args.levels]
    reward_sets, quality = {}, []
    for sd, mis in levels:
        lvlm = params[LVLM_SECTION]
        config = labelling_config({**lvlm, "scripted": {**lvlm["scripted"], "score_sd": sd, "misattribution": mis}})
        level = f"sd={sd:g}, mis={mis:g}"
        for name in args.methods:
            # One cache per level, shared by the methods (their queries never share a key); RG-VLM's
            # level caches are the ones the sweep wrote before it relabelled other methods.
            cache = args.cache / f"cache_sd{sd:g}_mis{mis:g}"
            stage1, stage2, _ = cached_clients(config, cache)
            method = METHODS[name]
            out_dir = cache / f"{name}_files"
            out_dir.mkdir(parents=True, exist_ok=True)
            dense, _ = method.label(data, (stage1, stage2), method.config_from_params(params[name]), out_dir,
                                    failure_policy(config, cache))  # the label stage's limit, as in the pipeline
            reward_sets[(name, level)] = dense.rewards
            if name == PAPER_METHOD:
                reward_sets[(f"sparse+{name}@{args.lam:g}", level)] = fuse(sparse, dense, args.lam).rewards
            quality.append({"method": name, "level": level, "score_sd": sd, "misattribution": mis,
                            **label_quality(data, dense.rewards, dense.values)})
            print(f"{name} {level}: AUROC {quality[-1]['auroc_completion']:.3f}, Spearman "
                  f"{quality[-1]['spearman_progress']:.3f}, VOC {quality[-1]['voc']:.3f}", flush=True)

    train = train_config(params["train"])
    config = iql_config_for(data, dataclasses.replace(train.iql, num_steps=args.steps) if args.steps else train.iql)
    # Each (reward set, level) is one reward set of the stack; its name only has to be unique.
    keys = {f"{name} [{level}]": (name, level) for name, level in reward_sets}
    stack = TrainingJob(data, {key: reward_sets[keys[key]] for key in keys}, args.seeds, config, probe=False).build()

    def report(step: int) -> None:
        if step % 500 == 0:
            print(f"step {step}/{config.num_steps}, {time.perf_counter() - started:.0f}s", flush=True)

    stack.train(config.num_steps, on_step=report, progress=False)
    evaluation = params["evaluation"]
    episodes = evaluation_episodes(data, tuple(evaluation["ks"]), ("fresh",), args.episodes, evaluation["seed"])
    records = evaluate_stack(stack, episodes, EnvConfig(**data.manifest["env"]), {"sampled": args.temperature})
    for record in records:  # the stack's name of the set -> the method's and the level's
        record["reward_set"], record["level"] = keys[record["reward_set"]]
    names = list(reward_sets)
    frame = pd.DataFrame(records)
    summary = pd.concat([summarize(group, samples=2000, seed=0).assign(level=level)
                         for level, group in frame.groupby("level")], ignore_index=True)

    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(m for m, _ in names))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), sharey=True, squeeze=False)
    for ax, reward_set in zip(axes[0], panels, strict=True):
        labelled_by = reward_set.split("+")[-1].split("@")[0]  # the method whose labels the set holds
        for q in (q for q in quality if q["method"] == labelled_by):
            rows = summary[(summary["reward_set"] == reward_set) & (summary["level"] == q["level"])].sort_values("k")
            ax.errorbar(rows["k"], rows["completion_mean"],
                        yerr=[rows["completion_mean"] - rows["completion_low"],
                              rows["completion_high"] - rows["completion_mean"]], marker="o", capsize=3,
                        label=f"{q['level']} (AUROC {q['auroc_completion']:.2f}, Spearman {q['spearman_progress']:.2f}, "
                              f"VOC {q['voc']:.2f})")
        ax.set_title(reward_set)
        ax.set_xlabel("number of sub-tasks k")
        ax.legend(fontsize="xx-small", title="scripted annotator noise (label quality)", title_fontsize="xx-small")
    axes[0][0].set_ylabel(METRIC_LABELS["completion"] + " (fresh seeds, sampled policy)")
    fig.suptitle("Label noise -> policy: the scripted annotator (NOT an LVLM) at several noise levels, IQL, "
                 f"{len(args.seeds)} seeds, {args.episodes} fresh episodes per k", fontsize="medium")
    fig.tight_layout()
    save_figure(fig, args.out / "noise_sweep.png")
    write_json_atomic(args.out / "noise_sweep.json", {
        "command": command("noise_sweep", argv),
        "labels_by": "scripted annotator (privileged ground truth + noise; not an LVLM)",
        "lambda": args.lam, "training_seeds": args.seeds, "iql_num_steps": config.num_steps,
        "episodes_per_k": args.episodes, "policy": f"sampled, temperature {args.temperature}",
        "label_quality": quality, "summary": summary.to_dict("records"),
        "seconds": round(time.perf_counter() - started, 1),
    })
    print(summary.pivot_table(index=["reward_set", "level"], columns="k", values="completion_mean").round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
