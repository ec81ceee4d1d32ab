# %% [markdown]
# # 2. Rewards: one reward per transition, for every reward method
#
# Every method maps the offline dataset to one reward per transition, with a record of its cost
# and provenance (`rgvlm/rewards/`). Written to `outputs/rewards/<name>.npy` + `.json` (cached by
# DVC, shared with `dvc push`/`dvc pull`).
#
# - `sparse`: 1 on the step that completes the whole mission (the environment's signal).
# - `oracle`: the number of sub-tasks the step completed, from the privileged ground truth.
#   An upper bound for dense rewards, never available to a real learner.
# - fusions `sparse+<dense>@<lambda>`: sparse + lambda * dense.

# %% tags=["parameters"]
from rgvlm.params import load_params

rewards = load_params()["rewards"]

# %%
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
# Mean reward per transition and per episode, by episode kind: a useful dense reward gives
# expert episodes more return than partial ones.

# %%
episode = data.episode_of_step
kinds = pd.Series([data.episodes[i]["kind"] for i in episode])
table = pd.DataFrame({r.method: pd.Series(r.rewards).groupby(kinds).mean() for r in results}).T
table["lvlm_calls"] = [r.cost["lvlm_calls"] for r in results]
table
