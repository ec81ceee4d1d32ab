# %% [markdown]
# # 2c. ERL-VLM: rewards learned from LVLM ratings of trajectory segments
#
# ERL-VLM (Luu et al., 2025) asks the LVLM for an *absolute rating* of a trajectory segment instead
# of a score per action. `erl_vlm.num_queries` segments of `erl_vlm.segment_length` transitions
# are drawn from the dataset; for each, the LVLM sees the frames (rendered by replay), the numbered
# actions and the mission, writes an analysis (stage 1), then answers one line
# `Rating: <class>` among `erl_vlm.num_classes` classes (Bad / Average / Good for 3; stage 2). An
# answer the strict parser rejects is re-asked, then the segment is dropped. A reward model
# r(s, a) (the IQL state encoder plus an action head) is fitted so that every rated segment's
# predicted return falls into its class: returns min-max normalised within the batch, class bounds
# from the batch's label proportions, a softmax over the distance to each class interval,
# stratified minibatches and a class-weighted MAE loss against noisy labels (`loss: ce` is the
# cross-entropy ablation). The model then relabels every transition, normalised to [0, 1]
# (`rgvlm/rewards/erl_vlm.py`, `rgvlm/rewards/reward_model.py`; prompts in `prompts/erl_vlm_*`).
# Answers go through the response cache `outputs/lvlm_cache/erl_vlm/` first: a rerun asks nothing twice.
#
# The embedded default backend is the **scripted annotator**: ratings computed from the dataset's
# privileged ground truth with configured noise. It is not an LVLM, and every figure made from it
# says so. Switch `labeling.backend` to `transformers` or `openai` for a real one.

# %% tags=["parameters"]
from rgvlm.params import load_params

labeling = load_params()["labeling"]
erl_vlm = load_params()["erl_vlm"]

# %%

from rgvlm import paths
from rgvlm.data import load_dataset
from rgvlm.data.storage import write_json_atomic
from rgvlm.params import labeling_config
from rgvlm.rewards import save_rewards
from rgvlm.rewards.erl_vlm import config_from_params, label_erl_vlm
from rgvlm.rewards.reward_model import embed_missions, save_reward_model
from rgvlm.rewards.rg_vlm import labeling_cost
from rgvlm.rl.missions import ENCODER_NAME
from rgvlm.vlm import cached_clients

data = load_dataset(paths.DATA)
config = config_from_params(erl_vlm)  # a bad value fails here, before any query
lvlm = labeling_config(labeling, max_trajectory_length=data.max_episode_limit)
stage1, stage2, usage = cached_clients(lvlm, paths.LVLM_CACHE / "erl_vlm")
mission_table = embed_missions(data)  # fixed thread count: the same bits on every run
result, stats, model = label_erl_vlm(data, stage1, stage2, config, needs_images=stage1.backend != "scripted",
                                     mission_table=mission_table)
cost = labeling_cost(usage, stats, lvlm.prices)
result.cost = cost
save_rewards(paths.LABELS / "erl_vlm", result)
save_reward_model(paths.LABELS / "erl_vlm" / "reward_model.pt", model,
                  {"method": "erl_vlm", "mission_encoder": ENCODER_NAME, "config": result.provenance["config"]})
write_json_atomic(paths.METRICS / "labeling_erl_vlm.json", {"provenance": result.provenance, "cost": cost})
{key: value for key, value in cost.items() if key != "reward_model"} | stats["reward_model"]

# %% [markdown]
# Diagnostic (privileged ground truth, never seen by the learner): the relabelled reward of the
# steps that complete a sub-task against all the others. A useful reward separates them.

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

completes = data.progress > data.progress_before
frame = pd.DataFrame({"reward": result.rewards,
                      "step": pd.Categorical(["completes a sub-task" if c else "other" for c in completes])})
fig, ax = plt.subplots(figsize=(6, 3))
sns.boxplot(data=frame, x="reward", y="step", ax=ax, showfliers=False)
annotator = "scripted annotator, not an LVLM" if stage1.backend == "scripted" else f"{stage1.backend}: {stage1.model}"
ax.set_title(f"ERL-VLM relabelled reward ({annotator})", fontsize=10)
plt.tight_layout()
plt.show()
