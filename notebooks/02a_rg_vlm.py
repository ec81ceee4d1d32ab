# %% [markdown]
# # 2a. RG-VLM labelling: the two-stage LVLM query
#
# Every episode is cut into windows; for each window the LVLM sees the frames (rendered by
# replay), the numbered actions and the mission, writes an analysis (stage 1), then scores every
# action from 0 to 10 as JSON (stage 2, possibly a cheaper model). Reward = score / 10
# (`rgvlm/rewards/rg_vlm.py`; prompts in `prompts/`). Every answer goes through the response
# cache `outputs/lvlm_cache/rg_vlm/` first: a rerun, or a run resumed after a crash, asks nothing twice,
# and `dvc push`/`dvc pull` share the answers.
#
# The embedded default backend is the **scripted annotator**: answers computed from the
# dataset's privileged ground truth with configured noise. It is not an LVLM, and every figure
# made from it says so. Switch `labeling.backend` to `transformers` or `openai` for a real one.

# %% tags=["parameters"]
from rgvlm.params import load_params

labeling = load_params()["labeling"]
rg_vlm = load_params()["rg_vlm"]

# %%
from rgvlm import paths
from rgvlm.data import load_dataset
from rgvlm.data.storage import write_json_atomic
from rgvlm.params import labeling_config
from rgvlm.rewards import save_rewards
from rgvlm.rewards.rg_vlm import config_from_params, label_rg_vlm, labeling_cost
from rgvlm.vlm import cached_clients

data = load_dataset(paths.DATA)
config = config_from_params(rg_vlm)
lvlm = labeling_config(labeling)
# Fails here, before any query, on a bad backend setting.
stage1, stage2, usage = cached_clients(lvlm, paths.LVLM_CACHE / "rg_vlm")
result, stats = label_rg_vlm(data, stage1, stage2, config, needs_images=stage1.backend != "scripted")
cost = labeling_cost(usage, stats, lvlm.prices)
result.cost = cost
save_rewards(paths.LABELS / "rg_vlm", result)
write_json_atomic(paths.METRICS / "labeling_rg_vlm.json", {"provenance": result.provenance, "cost": cost})
cost
