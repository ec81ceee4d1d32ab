# %% [markdown]
# # 2b. VLM-CaR labelling: code as reward
#
# The comparison method of Venuto et al. (2024). The LVLM is asked a handful of times instead of
# once per transition: once per distinct mission it sees the goal with the first and last frames
# of an episode (rendered by replay) and lists the ordered sub-tasks; once per distinct sub-task it
# writes a program `check(obs) -> bool` over the documented observation API
# (`rgvlm/rewards/observation_api.py`). Programs are untrusted code: they run in a sandbox
# (`rgvlm/sandbox.py`: separate process, no imports, no files, CPU, memory and wall-clock limits).
# They are kept only if they complete every sub-task on the dataset's expert trajectories and if
# at most 10% of random-action rollouts complete 2 sub-tasks; failing programs are regenerated
# with the failure fed back. Reward of a transition = increase of the ordered, latched sub-task
# progress the accepted programs compute (`rgvlm/rewards/vlm_car.py`; prompts in
# `prompts/vlm_car_*.txt`). Answers go through the response cache `outputs/lvlm_cache/vlm_car/`.
#
# The embedded default backend is the **scripted annotator**: it answers from the dataset's
# privileged ground truth (the true sub-tasks; correct programs, or with the configured
# `misattribution` chance a buggy one that verification has to catch). It is not an LVLM, and
# every figure made from it says so. Switch `labeling.backend` to `transformers` or `openai`
# for a real one.

# %% tags=["parameters"]
from rgvlm.params import load_params

labeling = load_params()["labeling"]
vlm_car = load_params()["vlm_car"]

# %%
from rgvlm import paths
from rgvlm.data import load_dataset
from rgvlm.data.storage import write_json_atomic
from rgvlm.params import labeling_config
from rgvlm.rewards import save_rewards
from rgvlm.rewards.rg_vlm import labeling_cost
from rgvlm.rewards.vlm_car import config_from_params, label_vlm_car
from rgvlm.vlm import cached_clients

data = load_dataset(paths.DATA)
config = config_from_params(vlm_car)  # fails here, before any query, on a bad vlm_car setting
lvlm = labeling_config(labeling, max_trajectory_length=data.max_episode_limit)
client, _, usage = cached_clients(lvlm, paths.LVLM_CACHE / "vlm_car")  # one model writes decompositions and programs
result, stats = label_vlm_car(data, client, config, needs_images=client.backend != "scripted")
programs = {"programs": stats.pop("programs"), "decompositions": stats.pop("decompositions")}
cost = labeling_cost(usage, stats, lvlm.prices)
result.cost = cost
save_rewards(paths.LABELS / "vlm_car", result)
write_json_atomic(paths.LABELS / "vlm_car" / "programs.json", programs)
write_json_atomic(paths.METRICS / "labeling_vlm_car.json", {"provenance": result.provenance, "cost": cost})
cost

# %% [markdown]
# Programs that failed verification for good (their sub-tasks give no reward), with the last reason:

# %%
{subtask: record["attempts"][-1]["failure"] for subtask, record in programs["programs"].items()
 if record["status"] == "failed"}
