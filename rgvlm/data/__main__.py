"""``python -m rgvlm.data collect``: build ``data/`` from ``params.yaml``.

The parameters are checked before any episode is collected. The result is byte-identical
for the same parameters, so a rebuilt ``data/`` matches ``data.dvc``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from rgvlm import paths
from rgvlm.data.collect import collect_dataset, params_record
from rgvlm.data.storage import save_dataset
from rgvlm.params import dataset_config, env_config, load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rgvlm.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="build the offline dataset from params.yaml")
    collect.add_argument("--params", default=str(paths.PARAMS), help="parameters file")
    collect.add_argument("--out", default=str(paths.DATA), help="output directory")
    collect.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    env_cfg = env_config(params.get("env", {}))
    cfg = dataset_config(params.get("dataset"))
    started = time.perf_counter()
    episodes, arrays, stats = collect_dataset(env_cfg, cfg, workers=max(1, args.workers))
    out = Path(args.out)
    # Build next to the target and swap in, so an interrupted run never leaves a mixed data/.
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    manifest = {
        "builder": "python -m rgvlm.data collect",
        **params_record(env_cfg, cfg),
        "num_episodes": len(episodes),
        "num_transitions": int(arrays["actions"].shape[0]),
        "bot_failures": stats["bot_failures"],
    }
    save_dataset(staging, manifest, episodes, arrays)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    print(
        f"collected {len(episodes)} episodes, {manifest['num_transitions']} transitions "
        f"into {out} in {time.perf_counter() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
