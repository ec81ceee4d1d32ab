"""Rebuild the exact outputs of the tiny profile into one directory (run by tests/test_exact.py
in a fresh process per thread count): the dataset, every label@<method> stage (scripted
annotator) and the rewards stage, by executing the stages' own notebook sources (with the method
injected after the parameters cell, as papermill does) with rgvlm.paths pointed at the directory. Usage: ``python tests/exact_outputs.py OUT_DIR NUM_THREADS``.

Output layout: OUT_DIR/data, OUT_DIR/outputs/labels/<method>, OUT_DIR/outputs/rewards,
OUT_DIR/reports/metrics/{label_quality,labelling_*}.json, OUT_DIR/cache (LVLM cache, not compared).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(out: Path, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import yaml

    torch.set_num_threads(threads)  # what the caller runs with; the stages must not depend on it

    from rgvlm import paths
    from rgvlm.data.collect import collect_dataset, params_record
    from rgvlm.data.storage import save_dataset
    from rgvlm.params import dataset_config, env_config, load_profile
    from rgvlm.rewards.registry import LABELLED_METHODS

    root = Path(__file__).resolve().parent.parent
    profile = load_profile(root / "profiles" / "tiny.yaml")  # the overlay merged onto params.yaml
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump(profile))
    os.chdir(out)  # load_params() reads ./params.yaml

    paths.DATA = out / "data"
    paths.OUTPUTS = out / "outputs"
    paths.LABELS = out / "outputs" / "labels"
    paths.REWARDS = out / "outputs" / "rewards"
    paths.LVLM_CACHE = out / "cache"
    paths.METRICS = out / "reports" / "metrics"

    env_cfg, cfg = env_config(profile["env"]), dataset_config(profile["dataset"])
    episodes, arrays, stats = collect_dataset(env_cfg, cfg)
    save_dataset(paths.DATA, {**params_record(env_cfg, cfg), "bot_failures": stats["bot_failures"]}, episodes, arrays)

    runs = [("02_label", {"method": method}) for method in LABELLED_METHODS] + [("03_rewards", {})]
    for name, injected in runs:
        source = notebook_source(root / "notebooks" / f"{name}.py", injected)
        namespace = {"__name__": f"notebook_{name}", "display": lambda *args, **kwargs: None}
        exec(compile(source, f"notebooks/{name}.py", "exec"), namespace)  # noqa: S102 (the stage's own code)
        plt.close("all")
        if torch.get_num_threads() != threads:
            raise SystemExit(f"{name} {injected} left torch with {torch.get_num_threads()} threads, not the caller's {threads}")


def notebook_source(path: Path, injected: dict) -> str:
    """The notebook's code cells, with ``injected`` assigned right after its parameters cell."""
    import jupytext

    cells = []
    for cell in jupytext.read(path).cells:
        if cell.cell_type == "code":
            cells.append(cell.source)
            if "parameters" in cell.metadata.get("tags", []):
                cells += [f"{key} = {value!r}" for key, value in injected.items()]
    return "\n".join(cells)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), int(sys.argv[2]))
