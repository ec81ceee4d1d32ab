# %% [markdown]
# # 6. Figures and the report
#
# Everything here is drawn from `reports/metrics/*` (never from numbers typed in): the
# completion-by-k figure (the shape of the paper's Figure 4), success by k, training curves,
# and `reports/index.html`, the page a reader opens first.

# %% tags=["parameters"]
# This stage reads no parameters: everything comes from the metrics files.

# %%
import json

import pandas as pd

from rgvlm import paths
from rgvlm.plots import label_quality_bars, metric_by_k, save_figure, training_curves
from rgvlm.report import build_index, provenance_title

evaluation = json.loads((paths.METRICS / "evaluation.json").read_text())
summary = pd.DataFrame(evaluation["summary"])
title = provenance_title(evaluation["provenance"]["reward_methods"])
for metric in ("completion", "success"):
    fig = metric_by_k(summary, metric, f"IQL, {metric} by number of sub-tasks\n{title}")
    save_figure(fig, paths.FIGURES / f"{metric}_by_k.png")

log = pd.read_csv(paths.METRICS / "training.csv")
columns = [c for c in ("critic_loss", "value_loss", "policy_loss", "v_mean") if c in log]
save_figure(training_curves(log, columns, f"IQL training curves\n{title}"), paths.FIGURES / "training_curves.png")
quality = json.loads((paths.METRICS / "label_quality.json").read_text())
quality_title = provenance_title({m: q["provenance"] for m, q in quality.items()})
save_figure(label_quality_bars(quality, f"Label quality\n{quality_title}"), paths.FIGURES / "label_quality.png")
build_index()
print("wrote", paths.INDEX_HTML.relative_to(paths.ROOT))

# %%
from IPython.display import Image, display

display(Image(filename=str(paths.FIGURES / "completion_by_k.png")))
