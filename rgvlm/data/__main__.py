"""``python -m rgvlm.data collect``: build ``data/`` from ``params.yaml``.
``python -m rgvlm.data export-minari``: write ``data/`` (optionally with a reward set of
``outputs/rewards/`` in place of the sparse reward) as a Minari dataset.
``python -m rgvlm.data import-alfred TRAJ_DIR [TRAJ_DIR ...]``: ALFRED trajectories
(``traj_data.json`` and their frames) as a Minari dataset that ``python -m rgvlm.relabel`` labels
(:mod:`rgvlm.data.alfred`).

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
    export = sub.add_parser("export-minari", help="write the offline dataset as a Minari dataset")
    export.add_argument("--data", default=str(paths.DATA), help="the dataset directory (default: data/)")
    export.add_argument("--rewards", default=None, metavar="NAME",
                        help="a reward set of --rewards-dir (outputs/rewards/<NAME>.npy) in place of the sparse reward")
    export.add_argument("--rewards-dir", default=str(paths.REWARDS), help="where the reward sets are")
    export.add_argument("--id", default=None, dest="dataset_id",
                        help="Minari dataset id (default: rgvlm/ordered/<rewards or sparse>-v0)")
    export.add_argument("--root", default=None,
                        help="Minari root (default: $MINARI_DATASETS_PATH, else ~/.minari/datasets)")
    export.add_argument("--force", action="store_true", help="replace a dataset of that id")
    alfred = sub.add_parser("import-alfred", help="write ALFRED trajectories (traj_data.json + frames) as a Minari dataset")
    alfred.add_argument("trajectories", nargs="+", metavar="TRAJ_DIR",
                        help="ALFRED trajectory directories (each with traj_data.json and its frame folder)")
    alfred.add_argument("--id", default="alfred/expert-v0", dest="dataset_id", help="Minari dataset id (default: alfred/expert-v0)")
    alfred.add_argument("--root", default=None,
                        help="Minari root (default: $MINARI_DATASETS_PATH, else ~/.minari/datasets)")
    alfred.add_argument("--annotation", type=int, default=0,
                        help="which language annotation (turk_annotations.anns index) gives the mission (default: 0)")
    alfred.add_argument("--subtasks", choices=("annotation", "plan"), default="annotation",
                        help="word the sub-goals by the annotation's high_descs (default) or by the plan's actions")
    alfred.add_argument("--frames-dir", default="raw_images", help="the frame folder of each trajectory (default: raw_images)")
    alfred.add_argument("--force", action="store_true", help="replace a dataset of that id")
    args = parser.parse_args(argv)
    if args.command == "export-minari":
        return export_minari_command(args)
    if args.command == "import-alfred":
        return import_alfred_command(args)

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


def export_minari_command(args: argparse.Namespace) -> int:
    """``export-minari``: every input is checked (id, reward set, target free) before writing."""
    from rgvlm.data.minari_export import default_dataset_id, export_minari
    from rgvlm.data.minari_store import check_writable
    from rgvlm.data.storage import load_dataset
    from rgvlm.rewards.base import load_rewards

    dataset_id = args.dataset_id or default_dataset_id(args.rewards)
    target = check_writable(dataset_id, args.root, args.force)
    dataset = load_dataset(args.data)
    rewards = None
    if args.rewards is not None:
        rewards = load_rewards(Path(args.rewards_dir), args.rewards).rewards
        if rewards.shape != (dataset.num_transitions,):
            raise SystemExit(f"reward set {args.rewards!r} in {args.rewards_dir} has {rewards.shape[0]} rewards, "
                             f"the dataset in {args.data} {dataset.num_transitions} transitions: rerun the rewards stage")
    started = time.perf_counter()
    made = export_minari(dataset, dataset_id, rewards, args.rewards, args.root, args.force)
    print(f"exported {made.total_episodes} episodes, {made.total_steps} transitions "
          f"(rewards: {args.rewards or 'sparse'}) as Minari dataset {dataset_id} at {target} "
          f"in {time.perf_counter() - started:.1f}s")
    return 0


def import_alfred_command(args: argparse.Namespace) -> int:
    """``import-alfred``: every trajectory is checked before the first frame is decoded."""
    from rgvlm.data.alfred import import_alfred
    from rgvlm.data.minari_store import minari_root

    started = time.perf_counter()
    try:
        made = import_alfred(args.trajectories, args.dataset_id, root=args.root, overwrite=args.force,
                             annotation=args.annotation, subtasks=args.subtasks, frames_dir=args.frames_dir)
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad input: the message says what to fix
        print(f"python -m rgvlm.data import-alfred: {error}", file=sys.stderr)
        return 2
    print(f"imported {made.total_episodes} ALFRED trajectories, {made.total_steps} low-level actions as Minari "
          f"dataset {args.dataset_id} at {minari_root(args.root) / args.dataset_id} in "
          f"{time.perf_counter() - started:.1f}s; label it with python -m rgvlm.relabel {args.dataset_id} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
