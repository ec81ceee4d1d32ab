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
# # 7. The noise sweep: how good must an LVLM's labels be before they help?
#
# Outside the default `dvc repro` (its own pipeline file, `optional/dvc.yaml`; run it with
# `make noise-sweep`): on the CPU profile it trains several times the default run's runs. Every
# method of `noise_sweep.methods` relabels the dataset through the **scripted annotator, which is
# not an LVLM** (it answers from the privileged ground truth with noise), at each noise level
# `[score_sd, misattribution]` of `noise_sweep.levels`; IQL trains on every (method, level), on
# sparse + lambda x the labels of `noise_sweep.fuse`, and on sparse, in one stack on the same seeds
# (its own runs, not the default run's), and every run is rolled out on the same layouts. From the
# per-layout table `reports/tuning/noise_sweep_per_layout.csv`: each (row, level)'s completion gain
# over sparse (paired by layout, mean over k), each row's noise-free minus default difference, Holm
# over both, and the fitted relation gain = a + b x label quality with a bootstrap band
# (`rgvlm/noise_sweep.py`; docs/statistics.md, "The noise sweep").

# %% tags=["parameters"]
from rgvlm.params import load_params

noise_sweep = load_params()["noise_sweep"]
labelling = load_params()["labelling"]
rg_vlm = load_params()["rg_vlm"]
vlm_car = load_params()["vlm_car"]
erl_vlm = load_params()["erl_vlm"]
rl_vlm_f = load_params()["rl_vlm_f"]
gvl = load_params()["gvl"]
train = load_params()["train"]
evaluation = load_params()["evaluation"]

# %%
import pandas as pd
from IPython.display import Image

from rgvlm.noise_sweep import FIGURE_PNG, RESULT_DIR, run_sweep

sections = {"noise_sweep": noise_sweep, "labelling": labelling, "rg_vlm": rg_vlm, "vlm_car": vlm_car,
            "erl_vlm": erl_vlm, "rl_vlm_f": rl_vlm_f, "gvl": gvl, "train": train, "evaluation": evaluation}
result = run_sweep(sections)  # relabel, train, evaluate, then every statistic from the per-layout table
print(result["figure_title"])
Image(str(RESULT_DIR / FIGURE_PNG))

# %% [markdown]
# The fitted relation on each label-quality measure (the methods' own rows; 95% bootstrap intervals):

# %%
for fit in result["fits"].values():
    print(f"{fit['x_label']}: {fit['words']}")

# %% [markdown]
# The noise-free level minus the default level, per row (mean over k, paired by layout), then every
# gain over sparse with the labels' quality; verdicts after Holm over both (`result["family"]`):

# %%
columns = ["row", "level", "difference", "low", "high", "p_holm", "verdict"]
pd.DataFrame(result["noise_effect"]).reindex(columns=columns).round(3)

# %%
pd.DataFrame(result["gains"]).reindex(columns=[*columns, "spearman_progress", "auroc_completion", "voc"]).round(3)
