# %% [markdown]
# # 6. Figures and the report
#
# Everything here is drawn from `reports/metrics/*` (never from numbers typed in): Figure 4 left
# (every row against k: completion, sub-tasks done and success, the dataset's own episodes as a
# reference), Figure 4 right (the fusion lambda ablation), the paired differences (row - sparse,
# row - bc, fusion - rg_vlm, decided with Holm's correction over the report's family: see
# `docs/statistics.md`), seen layouts vs fresh seeds, success by k, label quality, training
# curves, and `reports/index.html`, the page a
# reader opens first, with the same report as `reports/README.md` for a repository browser (both
# rendered from one set of tables). `report.headline_lambda` picks the fusion drawn in Figure 4
# left; it is fixed in advance, never chosen by looking at the evaluation seeds.

# %% tags=["parameters"]
from rgvlm.params import load_params

report = load_params()["report"]

# %%
import json

import pandas as pd

from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.params import ParamError
from rgvlm.plots import (
    dataset_reference,
    figure4,
    generalisation_bars,
    label_quality_bars,
    metric_by_k,
    paired_by_k,
    save_figure,
    training_curves,
)
from rgvlm.report import (
    build_report,
    figure4_left_reward_sets,
    figure4_metrics,
    figure4_right_reward_sets,
    provenance_title,
    report_family,
)
from rgvlm.rewards import fused_name
from rgvlm.rl.diagnostics import DIAGNOSTIC_NAMES

evaluation = json.loads((paths.METRICS / "evaluation.json").read_text())
evaluated = list(evaluation["provenance"]["policies"])
policy = report.get("policy", evaluated[0])
if policy not in evaluated:
    raise ParamError("report.policy", policy, f"an evaluated policy (evaluation.policies: {', '.join(evaluated)})")
everything = pd.DataFrame(evaluation["summary"])
summary = everything[everything["policy"] == policy]
reward_sets = sorted(summary["reward_set"].unique())
headline = fused_name("rg_vlm", float(report["headline_lambda"]))
if headline not in reward_sets:
    raise ParamError("report.headline_lambda", report["headline_lambda"],
                     f"a lambda of an evaluated fusion (evaluated: {', '.join(reward_sets)})")
title = provenance_title(evaluation["provenance"]["reward_sets"])
left, right = figure4_left_reward_sets(reward_sets, headline), figure4_right_reward_sets(reward_sets)
split = report.get("split", "fresh")
# The dataset's own completion, sub-tasks done and success per k: Figure 4's reference line.
reference = dataset_reference(json.loads((paths.METRICS / "dataset.json").read_text()))
for name in evaluated:  # the report's policy gets the plain file names, the others a suffix
    rows, suffix, how = everything[everything["policy"] == name], "" if name == policy else f"_{name}", f"{name} policy"
    save_figure(figure4(rows, f"Figure 4 left: IQL by number of sub-tasks ({how})\n{title}", left, split, reference),
                paths.FIGURES / f"fig4_left{suffix}.png")
save_figure(figure4(summary, f"Figure 4 right: sparse + lambda * RG-VLM ({policy} policy)\n{title}", right, split,
                    reference), paths.FIGURES / "fig4_right.png")
family = report_family(pd.DataFrame(evaluation.get("paired", [])), policy, split)
if not family.empty:
    save_figure(paired_by_k(family, f"Paired differences in completion, Holm over {len(family)} tests "
                                    f"({policy} policy, {split})\n{title}"), paths.FIGURES / "paired_differences.png")
save_figure(metric_by_k(summary, "success", f"Full-task success by number of sub-tasks ({policy} policy)\n{title}",
                        left), paths.FIGURES / "success_by_k.png")
overall = pd.DataFrame(evaluation["overall"])
save_figure(generalisation_bars(overall[overall["policy"] == policy], "completion",
                                f"Seen layouts vs randomised initial states ({policy} policy)\n{title}"),
            paths.FIGURES / "generalisation.png")

log = pd.read_csv(paths.METRICS / "training.csv")
columns = [c for c in ("critic_loss", "value_loss", "policy_loss", "v_mean") if c in log]
save_figure(training_curves(log, columns, f"IQL training curves\n{title}"), paths.FIGURES / "training_curves.png")
probed = log.dropna(subset=list(DIAGNOSTIC_NAMES))
if not probed.empty:
    save_figure(training_curves(probed, list(DIAGNOSTIC_NAMES), f"Critic diagnostic on held-out episodes\n{title}"),
                paths.FIGURES / "critic_diagnostic.png")
quality = json.loads((paths.METRICS / "label_quality.json").read_text())
quality_title = provenance_title({m: q["provenance"] for m, q in quality.items()})
save_figure(label_quality_bars(quality, f"Label quality\n{quality_title}"), paths.FIGURES / "label_quality.png")
build_report(headline=headline, split=split, policy=policy)
# Figure 4's numbers as a metrics file of their own (dvc.yaml), the columns of `dvc exp show`.
write_json_atomic(paths.FIGURE4, figure4_metrics(everything, headline, split, policy))
print("wrote", *(p.relative_to(paths.ROOT) for p in (paths.INDEX_HTML, paths.REPORT_README, paths.FIGURE4)))

# %%
from IPython.display import Image, display

for name in ("fig4_left.png", "fig4_right.png", "paired_differences.png", "generalisation.png"):
    if not (paths.FIGURES / name).exists():
        continue
    display(Image(filename=str(paths.FIGURES / name)))

# %% [markdown]
# ## Does this run agree with the committed results?
#
# The same comparison as `make verify` (`rgvlm/verify.py`; README "Reproducing and verifying"):
# the results in the working tree against those committed at `HEAD`, exact outputs exactly,
# trained numbers against their 95% intervals. Right after a commit both are the same files and
# everything agrees; after `make reproduce` on another machine this is the reproduction's check.
# Informational here: a disagreement (or a checkout without git history) is shown, never raised.

# %%
from rgvlm.verify import VerifyError, compare

try:
    check = compare(paths.ROOT, "HEAD")
except VerifyError as error:
    print("verify: not compared:", error)
else:
    print(check.verdict())
    table = pd.DataFrame([{"result": "agree" if r.agree else "DIFFERS", "kind": r.kind, "item": r.item,
                           "committed": r.committed, "regenerated": r.regenerated, "must be / fall within": r.allowed}
                          for r in check.rows]).sort_values("result", kind="stable")
    display(table)
