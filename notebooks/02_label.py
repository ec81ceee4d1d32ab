# %% [markdown]
# # 2. Labelling: one reward method's labels for every transition
#
# The stage `label@<method>` runs this notebook for one method registered in
# `rgvlm/rewards/registry.py` (RG-VLM and the methods it is compared with), with the method's own
# params section and, for a method that asks an LVLM, the shared `labelling` backend. It writes
# `outputs/labels/<method>/` (the rewards, and the method's programs or reward model) and
# `reports/metrics/labelling_<method>.json` (provenance and cost: calls, cache hits, tokens, time).
# Every LVLM answer goes through the response cache `outputs/lvlm_cache/<method>/` first: a rerun,
# or a run resumed after a crash, asks nothing twice, and `dvc push`/`dvc pull` share the answers.
#
# The embedded default backend is the **scripted annotator**: answers computed from the dataset's
# privileged ground truth with configured noise. It is not an LVLM, and every figure made from it
# says so. Switch `labelling.backend` to `transformers` or `openai` for a real one.

# %% tags=["parameters"]
method = "rg_vlm"  # the registered method (the pipeline injects it: the stage label@<method>)
params = None  # the params sections the stage declares (injected); None: read from params.yaml

# %%
from rgvlm.rewards import label_stage

run = label_stage.run(method, params)  # labels, then writes the stage's outputs
run.description()

# %% [markdown]
# What the labelling cost (`reports/metrics/labelling_<method>.json`):

# %%
run.cost

# %% [markdown]
# Diagnostic (privileged ground truth, never seen by the learner): the reward of the steps that
# complete a sub-task against all the others. A useful reward separates them.

# %%
run.figure()

# %% [markdown]
# The method's own diagnostic, if it has one (VLM-CaR: the programs that failed verification for
# good, with the last reason; embedding: what the encoder saw on one episode).

# %%
run.diagnostic()
