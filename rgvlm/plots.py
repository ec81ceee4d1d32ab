"""Figures, drawn from the metrics files only (never from numbers typed in)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

SPLIT_TITLES = {"seen": "layouts seen in the dataset", "fresh": "fresh seeds (randomised initial states)"}
METRIC_LABELS = {"completion": "proportion of sub-tasks completed", "success": "full-task success rate",
                 "subtasks": "mean sub-tasks done (completion x k)"}


def wrap(title: str, width: int = 100) -> str:
    """Long provenance titles on several lines instead of clipped."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def reward_set_order(reward_sets: list[str]) -> list[str]:
    """Sparse first, the oracle last (it is a reference), the rest alphabetically between."""
    rest = sorted(m for m in reward_sets if m not in ("sparse", "oracle"))
    return [m for m in ("sparse",) if m in reward_sets] + rest + [m for m in ("oracle",) if m in reward_sets]


#: Rows that use no reward model: behaviour cloning in the same stack, and the d3rlpy peer library.
BASELINE_ROWS = ("bc", "bc_success", "d3rlpy_bc", "d3rlpy_cql")

# One style per row, fixed by its name, so a row looks the same in every figure. Reward rows:
# distinct saturated colours, filled markers, solid lines; the fusions of Figure 4 right: one
# orange-red family darkening with lambda; the baselines and peers (no reward model): greys,
# hollow markers, dashed lines; the oracle (a reference, not a method): black, dash-dot.
_REWARD_STYLES = {
    "sparse": ("#0072B2", "o"), "rg_vlm": ("#009E73", "s"), "vlm_car": ("#6A3D9A", "^"),
    "erl_vlm": ("#8C564B", "D"), "rl_vlm_f": ("#CC79A7", "v"), "gvl": ("#808000", "P"),
    "embedding": ("#17BECF", "X"),
}
_BASELINE_STYLES = {"bc": ("#4D4D4D", "o"), "bc_success": ("#4D4D4D", "s"), "d3rlpy_bc": ("#9A9A9A", "^"),
                    "d3rlpy_cql": ("#9A9A9A", "D")}
_SPARE_COLOURS = ("#E69F00", "#56B4E9", "#B15928", "#1F78B4", "#33A02C", "#FB9A99", "#CAB2D6", "#FDBF6F")
_SPARE_MARKERS = ("h", "p", "8", "<", ">", "d", "H", "*")
_FUSION_MARKERS = ("<", ">", "h", "p", "8", "d", "H")


def _fusion_lambda(name: str) -> float | None:
    head, _, tail = name.partition("@")
    if not head.startswith("sparse+") or not tail:
        return None
    try:
        return float(tail)
    except ValueError:
        return None


def row_styles(rows: list[str]) -> dict[str, dict]:
    """Matplotlib keyword arguments (color, marker, linestyle, marker fill) per row: every row
    distinguishable by colour AND marker; baselines and peers grey and dashed, the oracle black."""
    from matplotlib import colormaps

    fusions = sorted((r for r in rows if _fusion_lambda(r) is not None), key=_fusion_lambda)
    shades = colormaps["OrRd"]
    styles: dict[str, dict] = {}
    spare = 0
    for row in rows:
        if row in _BASELINE_STYLES:
            colour, marker = _BASELINE_STYLES[row]
            styles[row] = {"color": colour, "marker": marker, "linestyle": "--", "markerfacecolor": "white",
                           "linewidth": 1.2}
        elif row == "oracle":
            styles[row] = {"color": "black", "marker": "*", "linestyle": "-.", "markersize": 9, "linewidth": 1.4}
        elif row in fusions:
            i = fusions.index(row)
            # Light shades vanish on white: 0.5 (smallest lambda) to 0.95 (largest); one fusion alone: 0.8.
            shade = 0.8 if len(fusions) == 1 else 0.5 + 0.45 * i / (len(fusions) - 1)
            styles[row] = {"color": shades(shade), "marker": _FUSION_MARKERS[i % len(_FUSION_MARKERS)],
                           "linestyle": "-", "linewidth": 1.8}
        else:
            colour, marker = _REWARD_STYLES.get(row) or (_SPARE_COLOURS[spare % len(_SPARE_COLOURS)],
                                                         _SPARE_MARKERS[spare % len(_SPARE_MARKERS)])
            spare += row not in _REWARD_STYLES
            styles[row] = {"color": colour, "marker": marker, "linestyle": "-", "linewidth": 1.8}
    return styles


def _with_subtasks(summary: pd.DataFrame) -> pd.DataFrame:
    """Summaries written before ``subtasks`` existed: completion x k (the same interval, scaled by k)."""
    if "subtasks_mean" in summary:
        return summary
    return summary.assign(**{f"subtasks_{end}": summary[f"completion_{end}"] * summary["k"]
                             for end in ("mean", "low", "high")})


def _dodged_rows(ax: plt.Axes, summary: pd.DataFrame, metric: str, rows: list[str], styles: dict) -> None:
    for offset, row in enumerate(rows):
        cells = summary[summary["reward_set"] == row].sort_values("k")
        if cells.empty:
            continue
        x = cells["k"] + (offset - (len(rows) - 1) / 2) * min(0.06, 0.7 / max(1, len(rows)))  # dodge the bars
        mean = cells[f"{metric}_mean"]
        err = [mean - cells[f"{metric}_low"], cells[f"{metric}_high"] - mean]
        ax.errorbar(x, mean, yerr=err, label=row, capsize=2, elinewidth=0.9, **styles[row])


def _reference_lines(ax: plt.Axes, reference: pd.DataFrame | None, metric: str, ks: list[int]) -> None:
    """The dataset's own episodes per k (what the behaviour data achieves), and for sub-tasks the
    most there is to do (k)."""
    if reference is not None and metric in reference:
        rows = reference[reference["k"].isin(ks)].sort_values("k")
        ax.plot(rows["k"], rows[metric], color="black", linestyle=":", marker="x", linewidth=1.2,
                label="dataset episodes (reference)")
    if metric == "subtasks":
        ax.plot(ks, ks, color="#BBBBBB", linewidth=1.0, label="all sub-tasks (k)")


def dataset_reference(card: dict) -> pd.DataFrame:
    """The dataset card's per-k completion, sub-tasks done and success (``reports/metrics/dataset.json``):
    the behaviour data's own level, a reference line in Figure 4."""
    rows = [{"k": int(r["k"]), "completion": float(r["mean_completion"]),
             "subtasks": float(r["mean_completion"]) * int(r["k"]), "success": float(r["success_rate"])}
            for r in card.get("per_k", []) if "mean_completion" in r and "success_rate" in r]
    return pd.DataFrame(rows, columns=["k", "completion", "subtasks", "success"])


def figure4(summary: pd.DataFrame, title: str, reward_sets: list[str], split: str = "fresh",
            reference: pd.DataFrame | None = None,
            metrics: tuple[str, ...] = ("completion", "subtasks", "success")) -> plt.Figure:
    """Figure 4 on one split: a panel per metric (completion, mean sub-tasks done, full-task
    success) against k, one line per row with its 95% interval, the dataset's own episodes as a
    reference (``reference``: :func:`dataset_reference`)."""
    sns.set_theme(style="whitegrid", context="notebook")
    summary = _with_subtasks(summary[summary["split"] == split])
    rows = [r for r in reward_sets if r in set(summary["reward_set"])]
    if not rows:
        raise ValueError(f"figure4: none of the rows {reward_sets} was evaluated on split {split!r}")
    styles = row_styles(rows)
    ks = sorted(int(k) for k in summary["k"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 4.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        _dodged_rows(ax, summary, metric, rows, styles)
        _reference_lines(ax, reference, metric, ks)
        ax.set_title(METRIC_LABELS[metric], fontsize="medium")
        ax.set_xlabel("number of sub-tasks k")
        ax.set_xticks(ks)
        if metric != "subtasks":
            ax.set_ylim(-0.02, 1.02)
    # One legend for all panels: the rows in their order, then the reference lines.
    entries: dict[str, object] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    labels = [r for r in rows if r in entries] + [lab for lab in entries if lab not in rows]
    fig.legend([entries[lab] for lab in labels], labels, loc="lower center", ncol=min(6, len(labels)),
               fontsize="small", frameon=False)
    fig.suptitle(wrap(f"{title}\n{SPLIT_TITLES.get(split, split)}"), fontsize="medium")
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) - 1) // 6), 1, 1))
    return fig


def metric_by_k(summary: pd.DataFrame, metric: str, title: str, reward_sets: list[str] | None = None,
                splits: list[str] | None = None) -> plt.Figure:
    """Mean ``metric`` against k per reward set, one panel per split, 95% intervals, each row in
    its own colour and marker (:func:`row_styles`).

    ``summary`` is the table of :func:`rgvlm.evaluation.summarize`; ``reward_sets`` (in that
    order) and ``splits`` select what is drawn (default: everything).
    """
    sns.set_theme(style="whitegrid", context="notebook")
    summary = _with_subtasks(summary)
    reward_sets = [m for m in (reward_sets or reward_set_order(sorted(summary["reward_set"].unique())))
                   if m in set(summary["reward_set"])]
    splits = [s for s in SPLIT_TITLES if s in set(summary["split"]) and (splits is None or s in splits)]
    styles = row_styles(reward_sets)
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4.2), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        _dodged_rows(ax, summary[summary["split"] == split], metric, reward_sets, styles)
        ax.set_title(SPLIT_TITLES[split])
        ax.set_xlabel("number of sub-tasks k")
        ax.set_xticks(sorted(summary["k"].unique()))
        if metric != "subtasks":
            ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel(METRIC_LABELS[metric])
    axes[0][-1].legend(title="reward", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.suptitle(wrap(title), fontsize="medium")
    fig.tight_layout()
    return fig


def paired_by_k(decided: pd.DataFrame, title: str) -> plt.Figure:
    """The paired differences against k, a panel per contrast kind (row - sparse, row - bc, fusion
    - rg_vlm), one line per row with its 95% interval; a filled marker where the difference is
    resolved after Holm's correction, a hollow one where it is not; zero as a black line."""
    sns.set_theme(style="whitegrid", context="notebook")
    kinds = list(dict.fromkeys(decided["kind"]))
    if not kinds:
        raise ValueError("paired_by_k: no paired differences to draw")
    rows = reward_set_order(sorted(decided["row"].unique()))
    styles = row_styles(rows)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.4), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        part = decided[decided["kind"] == kind]
        drawn = [r for r in rows if r in set(part["row"])]
        for offset, row in enumerate(drawn):
            cells = part[part["row"] == row].sort_values("k")
            x = cells["k"] + (offset - (len(drawn) - 1) / 2) * min(0.06, 0.7 / max(1, len(drawn)))
            style = dict(styles[row])
            err = [cells["difference"] - cells["low"], cells["high"] - cells["difference"]]
            ax.errorbar(x, cells["difference"], yerr=err, capsize=2, elinewidth=0.9, label=row,
                        **{**style, "markerfacecolor": "white"})
            resolved = cells["verdict"] != "not resolved"
            ax.plot(x[resolved], cells["difference"][resolved], linestyle="none", marker=style["marker"],
                    color=style["color"], markersize=style.get("markersize", 6))
        ax.axhline(0.0, color="black", linewidth=1.0)
        ax.set_title(kind, fontsize="medium")
        ax.set_xlabel("number of sub-tasks k")
        ax.set_xticks(sorted(part["k"].unique()))
        ax.legend(fontsize="x-small", ncol=2)
    axes[0][0].set_ylabel("paired difference in completion")
    fig.suptitle(wrap(title), fontsize="medium")
    fig.tight_layout()
    return fig


def generalisation_bars(overall: pd.DataFrame, metric: str, title: str) -> plt.Figure:
    """Seen layouts vs fresh seeds per reward set, pooled over k, with 95% intervals."""
    sns.set_theme(style="whitegrid", context="notebook")
    reward_sets = reward_set_order(sorted(overall["reward_set"].unique()))
    splits = [s for s in SPLIT_TITLES if s in set(overall["split"])]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(reward_sets) + 2), 4.2))
    width = 0.8 / len(splits)
    colours = sns.color_palette("colorblind", len(splits))
    for i, split in enumerate(splits):
        rows = overall[overall["split"] == split].set_index("reward_set").reindex(reward_sets)
        x = [j + (i - (len(splits) - 1) / 2) * width for j in range(len(reward_sets))]
        mean = rows[f"{metric}_mean"]
        err = [mean - rows[f"{metric}_low"], rows[f"{metric}_high"] - mean]
        ax.bar(x, mean, width, yerr=err, capsize=3, label=SPLIT_TITLES[split], color=colours[i])
    ax.set_xticks(range(len(reward_sets)), reward_sets, rotation=30, ha="right")
    ax.set_ylabel(f"{METRIC_LABELS[metric]}\n(all k pooled)")
    ax.legend(fontsize="small")
    fig.suptitle(wrap(title), fontsize="medium")
    fig.tight_layout()
    return fig


def training_curves(log: pd.DataFrame, columns: list[str], title: str) -> plt.Figure:
    """Training metrics against update step, mean over seeds with a band, per reward set."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        sns.lineplot(data=log, x="step", y=column, hue="reward_set", ax=ax, errorbar=("pi", 100),
                     hue_order=reward_set_order(sorted(log["reward_set"].unique())))
        ax.set_title(column)
        if ax is not axes[0][-1]:
            ax.get_legend().remove()
    fig.suptitle(wrap(title), fontsize="medium")
    fig.tight_layout()
    return fig


def label_quality_bars(quality: dict, title: str) -> plt.Figure:
    """Each reward set's agreement with ground-truth progress (Spearman, AUROC: privileged ground
    truth) and its VOC on the expert episodes (no ground truth; a file without it draws none)."""
    sns.set_theme(style="whitegrid", context="notebook")
    reward_sets = reward_set_order(list(quality))
    measures = (("spearman_progress", "Spearman with progress (ground truth)"),
                ("auroc_completion", "AUROC: step completed a sub-task (ground truth)"),
                ("voc", "VOC on expert episodes (no ground truth)"))
    frame = pd.DataFrame(
        [{"reward": m, "metric": label, "value": quality[m][key]}
         for m in reward_sets for key, label in measures
         if isinstance(quality[m].get(key), (int, float)) and quality[m][key] == quality[m][key]]  # not NaN
    )
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(reward_sets)), 4.2))
    sns.barplot(data=frame, x="reward", y="value", hue="metric", ax=ax)
    low = float(frame["value"].min()) if len(frame) else 0.0
    ax.set_ylim(min(0.0, low - 0.05), 1.05)  # VOC and Spearman may be negative
    ax.axhline(0.0, color="black", linewidth=0.8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")  # long fusion names
    ax.set_xlabel("")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.suptitle(wrap(title), fontsize="medium")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path) -> None:
    """Save as PNG with a fixed DPI and no timestamp metadata, then close."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, metadata={"Software": None})
    tmp.replace(path)
    plt.close(fig)


def reward_by_completion(rewards, completes, title: str) -> plt.Figure:
    """A labelling diagnostic (privileged ground truth, never seen by the learner): the reward of
    the steps that complete a sub-task against all the others. A useful reward separates them."""
    frame = pd.DataFrame({"reward": rewards,
                          "step": pd.Categorical(["completes a sub-task" if c else "other" for c in completes])})
    fig, ax = plt.subplots(figsize=(6, 3))
    sns.boxplot(data=frame, x="reward", y="step", ax=ax, showfliers=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
