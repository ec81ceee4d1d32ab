# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Evaluation: rollouts on k = 1..6, seen layouts and fresh seeds
#
# Every trained run (IQL on each reward set, and the BC baselines) is rolled out on the same start
# states: layouts that appear in the dataset (`seen`) and fresh seeds that no dataset episode used
# (`fresh`, the paper's randomised initial states), under every policy of `evaluation.policies`
# (greedy = argmax; sampled = a draw from the policy's softmax at the given temperature; greedy
# policies can loop forever in a deterministic grid world). Per (policy, row, split, k): the
# proportion of sub-tasks completed, the sub-tasks done and the full-task success rate, mean over
# training seeds with a two-level bootstrap 95% interval over training seeds AND layouts (every
# run meets the same layouts, so the layouts are drawn once for all seeds), and the paired
# differences row - sparse, row - bc and sparse+rg_vlm@lambda - rg_vlm, layout by layout
# (`rgvlm/evaluation/paired.py`, `docs/statistics.md`). The per-layout table
# `reports/metrics/per_layout.csv` holds every (policy, row, split, k, layout) cell; every
# interval and difference below is computed from it, so a reader recomputes them from it alone.

# %% tags=["parameters"]
from rgvlm.params import load_params

evaluation = load_params()["evaluation"]

# %%
import json

import pandas as pd

from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.data import load_dataset
from rgvlm.evaluation import (
    evaluate_policies,
    evaluation_episodes,
    paired_differences,
    per_layout_table,
    records_from_per_layout,
    summarize,
    summarize_overall,
)
from rgvlm.evaluation.chaining import chaining_tables, subtask_outcomes
from rgvlm.evaluation.paired import PER_LAYOUT_FILE
from rgvlm.params import EnvConfig, evaluation_config, resolve_device
from rgvlm.rewards import load_rewards
from rgvlm.rl.training import BASELINE_DESCRIPTIONS

config = evaluation_config(evaluation)
device = resolve_device(config.device)
data = load_dataset(paths.DATA)
env_config = EnvConfig(**data.manifest["env"])  # evaluate on the environment the data came from
episodes = evaluation_episodes(data, config.ks, config.splits, config.episodes_per_k, config.seed)
trained = json.loads((paths.MODELS / "runs.json").read_text())  # written by the training stage
runs = [(name, int(seed)) for name, seed in trained["runs"]]
print(f"{len(runs)} runs x {len(episodes)} episodes x {len(config.policies)} policies on {device}, "
      f"{config.workers} worker(s)")

# %%
# All runs step in lockstep with one vmapped policy call per step; (policy, k, split) chunks in parallel.
records = evaluate_policies(paths.MODELS, runs, episodes, env_config, config.policies, config.seed, device,
                            config.workers)
# The d3rlpy peer baselines (stage 4b) were rolled out on the same start states and policies.
peer = pd.read_csv(paths.PEER / "episodes.csv")
peer_settings = json.loads((paths.METRICS / "peer.json").read_text())
frame = pd.concat([pd.DataFrame(records), peer[[c for c in peer.columns if c in records[0]]]], ignore_index=True)
print(frame.groupby(["policy", "reward_set"])["completion"].mean().round(3).to_string())
paths.EVALUATION.mkdir(parents=True, exist_ok=True)
frame.to_csv(paths.EVALUATION / "episodes.csv", index=False)
# The per-layout table (committed), and every statistic computed from it as read back: what a
# reader recomputes from reports/metrics/per_layout.csv is then exactly what is reported.
paths.METRICS.mkdir(parents=True, exist_ok=True)
per_layout_table(frame).to_csv(paths.METRICS / PER_LAYOUT_FILE, index=False)
cells = records_from_per_layout(pd.read_csv(paths.METRICS / PER_LAYOUT_FILE))
summary = summarize(cells, samples=config.bootstrap_samples, seed=config.seed)
overall = summarize_overall(cells, samples=config.bootstrap_samples, seed=config.seed)  # seen vs fresh, all k
paired = paired_differences(cells, samples=config.bootstrap_samples, seed=config.seed)  # Holm: in the report
# Where the policies stop: success of each sub-task once reached, per kind (open / put) and per
# position in the sequence, read from each episode's mission and progress (no privileged replay).
keys = ["policy", "reward_set", "split"]
chaining = chaining_tables(subtask_outcomes(frame.to_dict("records"), keys=tuple(keys)), keys)

# %%
provenance = {
    "reward_sets": {name: load_rewards(paths.REWARDS, name).provenance for name in trained["reward_sets"]},
    "baselines": {**{name: BASELINE_DESCRIPTIONS[name] for name in trained["baselines"]},
                  **{name: f"{peer_settings['library']} {s['algorithm']} on the {peer_settings['reward_set']} reward: "
                             f"{s['architecture']}; batch {s['batch_size']}, lr {s['learning_rate']}, "
                             f"{s['n_steps']} updates (settings in reports/metrics/peer.json)"
                     for name, s in peer_settings["settings"].items()}},
    "train": trained,
    "evaluation": evaluation,
    "dataset": {"env": data.manifest["env"], "dataset": data.manifest["dataset"]},
    "policies": {name: ("greedy (argmax of the policy)" if t == 0 else f"sampled from softmax(logits / {t})")
                 for name, t in config.policies.items()},
}
write_json_atomic(paths.METRICS / "evaluation.json", {"provenance": provenance, "summary": summary.to_dict("records"),
                                                    "overall": overall.to_dict("records"),
                                                    "paired": paired.to_dict("records"),
                                                    "chaining": {name: table.to_dict("records")
                                                                 for name, table in chaining.items()}})
summary.pivot_table(index=["policy", "reward_set", "split"], columns="k", values="completion_mean").round(3)
