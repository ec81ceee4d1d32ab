# %% [markdown]
# # 2d. RL-VLM-F: rewards learned from LVLM preferences between segments
#
# RL-VLM-F (Wang et al., 2024) asks the LVLM which of two observations better achieves the goal.
# Here `rl_vlm_f.num_queries` pairs of segments of `rl_vlm_f.segment_length` transitions that share a
# mission are drawn from the dataset; for each pair the LVLM sees both segments' frames (rendered by
# replay), their numbered actions and the mission, describes both (stage 1), then answers one line
# `Preference: 0`, `Preference: 1` or `Preference: -1` (cannot tell; stage 2). Pairs it cannot tell
# apart are dropped and counted; an answer the strict parser rejects is re-asked, then dropped. A
# Bradley-Terry ensemble of `rl_vlm_f.ensemble_size` reward models r(s, a) (the IQL state encoder
# plus an action head) is trained with cross-entropy on the preferences, and the ensemble mean
# relabels every transition, normalised to [0, 1] (`rgvlm/rewards/rl_vlm_f.py`,
# `rgvlm/rewards/reward_model.py`; prompts in `prompts/rl_vlm_f_*`). Answers go through the
# response cache `outputs/lvlm_cache/rl_vlm_f/` first: a rerun asks nothing twice.
#
# The embedded default backend is the **scripted annotator**: preferences computed from the
# dataset's privileged ground truth with configured noise. It is not an LVLM, and every figure made
# from it says so. Switch `labeling.backend` to `transformers` or `openai` for a real one.

# %% tags=["parameters"]
from rgvlm.params import load_params

labeling = load_params()["labeling"]
rl_vlm_f = load_params()["rl_vlm_f"]

# %%

from rgvlm import paths
from rgvlm.data import load_dataset
from rgvlm.data.storage import write_json_atomic
from rgvlm.params import labeling_config
from rgvlm.rewards import save_rewards
from rgvlm.rewards.reward_model import embed_missions, save_reward_model
from rgvlm.rewards.rg_vlm import labeling_cost
from rgvlm.rewards.rl_vlm_f import config_from_params, label_rl_vlm_f
from rgvlm.rl.missions import ENCODER_NAME
from rgvlm.vlm import cached_clients

data = load_dataset(paths.DATA)
config = config_from_params(rl_vlm_f)  # a bad value fails here, before any query
lvlm = labeling_config(labeling, max_trajectory_length=data.max_episode_limit)
stage1, stage2, usage = cached_clients(lvlm, paths.LVLM_CACHE / "rl_vlm_f")
mission_table = embed_missions(data)  # fixed thread count: the same bits on every run
result, stats, model = label_rl_vlm_f(data, stage1, stage2, config, needs_images=stage1.backend != "scripted",
                                      mission_table=mission_table)
cost = labeling_cost(usage, stats, lvlm.prices)
result.cost = cost
save_rewards(paths.LABELS / "rl_vlm_f", result)
save_reward_model(paths.LABELS / "rl_vlm_f" / "reward_model.pt", model,
                  {"method": "rl_vlm_f", "mission_encoder": ENCODER_NAME, "config": result.provenance["config"]})
write_json_atomic(paths.METRICS / "labeling_rl_vlm_f.json", {"provenance": result.provenance, "cost": cost})
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
ax.set_title(f"RL-VLM-F relabelled reward ({annotator})", fontsize=10)
plt.tight_layout()
plt.show()
