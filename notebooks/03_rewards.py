# %% [markdown]
# # 3. Rewards: one reward per transition, for every reward method
#
# Every method maps the offline dataset to one reward per transition, with a record of its cost
# and provenance (`rgvlm/rewards/`). Written to `outputs/rewards/<name>.npy` + `.json` (cached by
# DVC, shared with `dvc push`/`dvc pull`).
#
# - `sparse`: 1 on the step that completes the whole mission (the environment's signal).
# - `oracle`: the number of sub-tasks the step completed, from the privileged ground truth.
#   An upper bound for dense rewards, never available to a real learner.
# - `rg_vlm`: the labelling stage's scores / 10 (stage 2).
# - the comparison methods (`vlm_car`, `erl_vlm`, `rl_vlm_f`, `gvl`, `embedding`): their labelling stages' rewards.
# - fusions `sparse+<dense>@<lambda>`: sparse + lambda * dense.

# %% tags=["parameters"]
from rgvlm.params import load_params

rewards = load_params()["rewards"]

# %%
import json

import pandas as pd

from rgvlm import paths
from rgvlm.data import load_dataset
from rgvlm.params import rewards_config
from rgvlm.rewards import REWARD_METHODS, compute_reward_sets, save_rewards

config = rewards_config(rewards, tuple(REWARD_METHODS))
data = load_dataset(paths.DATA)
results = compute_reward_sets(data, config.methods, config.fusion_dense, config.fusion_lambdas)
for result in results:
    save_rewards(paths.REWARDS, result)

# %% [markdown]
# Label quality: each reward set's agreement with the privileged ground truth (Spearman with the
# sub-tasks each step completed; AUROC for "this step completed a sub-task"), which only a benchmark
# has, and its Value-Order Correlation (VOC) on the expert episodes, which needs only trajectories
# known to succeed: a user can compute it on their own data. VOC reads a method's per-state values
# where it has them (GVL's progress), else the running sum of its median-centred reward
# (`rgvlm/evaluation/label_quality.py`).

# %%
from rgvlm.atomic import write_json_atomic
from rgvlm.evaluation.label_quality import label_quality

quality = {r.reward_set: {**label_quality(data, r.rewards, r.values), "provenance": r.provenance} for r in results}
write_json_atomic(paths.METRICS / "label_quality.json", quality)
pd.DataFrame({m: {k: v for k, v in q.items() if k != "provenance"} for m, q in quality.items()}).T

# %% [markdown]
# Mean reward per transition and per episode, by episode kind: a useful dense reward gives
# expert episodes more return than partial ones.

# %%
episode = data.episode_of_step
kinds = pd.Series([data.episodes[i]["kind"] for i in episode])
table = pd.DataFrame({r.reward_set: pd.Series(r.rewards).groupby(kinds).mean() for r in results}).T
# LVLM calls of this run's labelling stages (a rerun from a warm cache asks none); the reward files
# keep no run-dependent counts, so that their bytes are exact.
table["lvlm_calls"] = [json.loads(path.read_text())["cost"].get("lvlm_calls", 0)
                       if (path := paths.METRICS / f"labelling_{r.reward_set}.json").exists() else 0 for r in results]
table
