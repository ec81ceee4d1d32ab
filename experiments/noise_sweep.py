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

    python experiments/noise_sweep.py --levels 0:0 1:0.1 2:0.3 4:0.5 --seeds 0 1 2 --episodes 30 --temperature 0.5
"""

from __future__ import annotations

import argparse
import dataclasses
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
from rgvlm.evaluation import evaluation_episodes, rollout, summarize  # noqa: E402
from rgvlm.evaluation.label_quality import label_quality  # noqa: E402
from rgvlm.params import EnvConfig, labelling_config, load_params, train_config  # noqa: E402
from rgvlm.plots import METRIC_LABELS, save_figure  # noqa: E402
from rgvlm.rewards import fuse, sparse_rewards  # noqa: E402
from rgvlm.rewards.registry import LVLM_SECTION, METHODS, PAPER_METHOD  # noqa: E402
from rgvlm.rl.diagnostics import holdout_mask  # noqa: E402
from rgvlm.rl.missions import mission_embedder  # noqa: E402
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL, StackedPolicy  # noqa: E402
from rgvlm.rl.runs import iql_config_for, scale_rewards  # noqa: E402
from rgvlm.vlm import cached_clients  # noqa: E402


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
    args = parser.parse_args(argv)

    started = time.perf_counter()
    params = load_params()
    data = load_dataset(paths.DATA)
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
            cache = paths.OUTPUTS / "experiments" / "noise_sweep" / f"cache_sd{sd:g}_mis{mis:g}"
            stage1, stage2, _ = cached_clients(config, cache)
            method = METHODS[name]
            out_dir = cache / f"{name}_files"
            out_dir.mkdir(parents=True, exist_ok=True)
            dense, _ = method.label(data, (stage1, stage2), method.config_from_params(params[name]), out_dir)
            reward_sets[(name, level)] = dense.rewards
            if name == PAPER_METHOD:
                reward_sets[(f"sparse+{name}@{args.lam:g}", level)] = fuse(sparse, dense, args.lam).rewards
            quality.append({"method": name, "level": level, "score_sd": sd, "misattribution": mis,
                            **label_quality(data, dense.rewards, dense.values)})
            print(f"{name} {level}: AUROC {quality[-1]['auroc_completion']:.3f}, Spearman "
                  f"{quality[-1]['spearman_progress']:.3f}, VOC {quality[-1]['voc']:.3f}", flush=True)

    train = train_config(params["train"])
    config = iql_config_for(data, dataclasses.replace(train.iql, num_steps=args.steps) if args.steps else train.iql)
    names = list(reward_sets)
    runs = [(name, seed) for name in names for seed in args.seeds]
    embedder = mission_embedder(config.mission_encoder)  # as the networks read missions
    table = torch.as_tensor(embedder.embed(data.missions))
    # Scaled as the pipeline's train stage scales every reward set (rgvlm.rl.runs.train_runs).
    scaled = [scale_rewards(data, rewards, config.reward_scale, config.gamma) for rewards in reward_sets.values()]
    transitions = DeviceTransitions(data, scaled, table, "cpu",
                                    holdout=holdout_mask(data, config.holdout_fraction),
                                    n_step=config.n_step, gamma=config.gamma)
    trainer = MultiRunIQL(config, [seed for _, seed in runs], [names.index(name) for name, _ in runs])
    while trainer.step < config.num_steps:
        trainer.train_step(transitions)
        if trainer.step % 500 == 0:
            print(f"step {trainer.step}/{config.num_steps}, {time.perf_counter() - started:.0f}s", flush=True)
    policy = StackedPolicy(config, [trainer.run_state(r)["policy"] for r in range(len(runs))],
                           temperature=args.temperature, seed=0)
    evaluation = params["evaluation"]
    episodes = evaluation_episodes(data, tuple(evaluation["ks"]), ("fresh",), args.episodes, evaluation["seed"])
    per_run = rollout(policy, episodes, EnvConfig(**data.manifest["env"]), embedder.embed, num_runs=len(runs))
    records = [{**r, "reward_set": name[0], "level": name[1], "run_seed": seed, "policy": "sampled"}
               for (name, seed), run_records in zip(runs, per_run, strict=True) for r in run_records]
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
    save_figure(fig, paths.REPORTS / "tuning" / "noise_sweep.png")
    write_json_atomic(paths.REPORTS / "tuning" / "noise_sweep.json", {
        "command": "python experiments/noise_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "labels_by": "scripted annotator (privileged ground truth + noise; not an LVLM)",
        "lambda": args.lam, "training_seeds": args.seeds, "iql_num_steps": config.num_steps,
        "episodes_per_k": args.episodes, "policy": f"sampled, temperature {args.temperature}",
        "label_quality": quality, "summary": summary.to_dict("records"),
        "seconds": round(time.perf_counter() - started, 1),
    })
    print(summary.pivot_table(index=["reward_set", "level"], columns="k", values="completion_mean").round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
