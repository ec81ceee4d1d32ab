# %% [markdown]
# # 5. Evaluation: rollouts on k = 1..6, seen layouts and fresh seeds
#
# Every trained run is rolled out (greedy policy) on the same start states: layouts that appear
# in the dataset (`seen`) and fresh seeds that no dataset episode used (`fresh`, the paper's
# randomised initial states). Per (reward set, split, k): the proportion of sub-tasks completed
# and the full-task success rate, mean over training seeds with a bootstrap 95% interval.

# %% tags=["parameters"]
from rgvlm.params import load_params

evaluation = load_params()["evaluation"]

# %%
import json

import pandas as pd

from rgvlm import paths
from rgvlm.data import load_dataset
from rgvlm.data.storage import write_json_atomic
from rgvlm.evaluation import evaluate_runs, evaluation_episodes, summarize, summarize_overall
from rgvlm.params import EnvConfig, evaluation_config, resolve_device
from rgvlm.rewards import load_rewards
from rgvlm.rl.missions import MissionEmbedder
from rgvlm.rl.runs import load_stacked_policy

config = evaluation_config(evaluation)
device = resolve_device(config.device)
data = load_dataset(paths.DATA)
env_config = EnvConfig(**data.manifest["env"])  # evaluate on the environment the data came from
episodes = evaluation_episodes(data, config.ks, config.splits, config.episodes_per_k, config.seed)
trained = json.loads((paths.MODELS / "runs.json").read_text())  # written by the training stage
runs = [(name, seed) for name in trained["reward_sets"] for seed in trained["seeds"]]
embedder = MissionEmbedder(device="cpu")
print(f"{len(runs)} runs x {len(episodes)} episodes on {device}")

# %%
policies = load_stacked_policy(paths.MODELS, runs, device)  # all runs' policies, one vmapped call per step
records = evaluate_runs(policies, runs, episodes, env_config, embedder.embed, device)
frame = pd.DataFrame(records)
print(frame.groupby(['method', 'run_seed'])['completion'].mean().round(3).to_string())
paths.EVALUATION.mkdir(parents=True, exist_ok=True)
frame.to_csv(paths.EVALUATION / "episodes.csv", index=False)
summary = summarize(frame, samples=config.bootstrap_samples, seed=config.seed)
overall = summarize_overall(frame, samples=config.bootstrap_samples, seed=config.seed)  # seen vs fresh, all k

# %%
provenance = {
    "reward_methods": {name: load_rewards(paths.REWARDS, name).provenance for name in trained["reward_sets"]},
    "train": trained,
    "evaluation": evaluation,
    "dataset": {"env": data.manifest["env"], "dataset": data.manifest["dataset"]},
    "policy": "greedy (argmax of the IQL policy)",
}
write_json_atomic(paths.METRICS / "evaluation.json", {"provenance": provenance, "summary": summary.to_dict("records"),
                                                    "overall": overall.to_dict("records")})
summary.pivot_table(index=["method", "split"], columns="k", values="completion_mean").round(3)
