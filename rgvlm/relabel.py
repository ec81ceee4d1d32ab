"""``python -m rgvlm.relabel``: relabel any Minari dataset with a registered reward method.

    python -m rgvlm.relabel SOURCE --method rg_vlm --output my/relabelled-v0 [--params params.yaml]

SOURCE is a Minari dataset: a directory, or an id in the local Minari root
(``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``); nothing is downloaded. The method and
its settings are those of the pipeline: the method's section and the shared ``labelling`` LVLM
backend of the params file, checked before anything is read. The episodes are labelled through
the same code as ``label@<method>`` (:func:`rgvlm.rewards.label_stage.label_with`: the same
backends, response cache, parsers and re-asks); the frames come from replaying each episode
through ``recover_environment()`` when the observations are not images, else from the image
observations (:mod:`rgvlm.data.minari_import`, ``--frames``).

Writes:

- the Minari dataset ``--output``: every episode as it was (observations, actions, terminations,
  truncations, infos, seeds and options), with the rewards replaced by the method's;
- ``--out-dir`` (default ``outputs/relabel/<output id>/``): ``summary.json`` (source and output,
  the cost record: LVLM calls, cache hits, tokens, time, estimated USD; the label quality of the
  new rewards and of the source's rewards against the ground truth the dataset offers), the
  reward set ``<method>.npy``/``.json`` and the method's own files.

The response cache (``--cache-dir``, default ``outputs/lvlm_cache/relabel/<method>``) keeps
every answer: a rerun asks nothing twice.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rgvlm import paths
from rgvlm.atomic import write_json_atomic

#: Where relabelling runs keep their summaries and reward files, and their LVLM answers.
RELABEL_OUTPUTS = paths.OUTPUTS / "relabel"
RELABEL_CACHE = paths.LVLM_CACHE / "relabel"


def _finite(obj: Any) -> Any:
    """``obj`` with NaN / infinity as None (JSON has no NaN; a metric undefined on the data is null)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _spec_note(spec, dropped: str | None) -> dict[str, Any]:
    """What the output says of its environment spec: the source's id, and whether it was written."""
    if spec is None:
        return {"source": None, "written": False, "reason": "the source has no environment spec"}
    if dropped:
        return {"source": spec.id, "written": False,
                "reason": f"{dropped}; written with its observation and action spaces only, so "
                          "recover_environment() cannot rebuild it"}
    return {"source": spec.id, "written": True, "reason": None}


def relabelled_buffers(mdataset, rewards: np.ndarray, episode_steps) -> tuple[list, list[dict]]:
    """The source's episodes as Minari buffers with ``rewards`` (``episode_steps(i)``: episode i's
    slice of them), and each episode's extra metadata (what Minari does not set itself)."""
    from minari.data_collector import EpisodeBuffer

    from rgvlm.data.minari_store import episode_metadata

    buffers, extras = [], []
    own = {"id", "seed", "options", "total_steps"}
    for i, (episode, meta) in enumerate(zip(mdataset.iterate_episodes(), episode_metadata(mdataset), strict=True)):
        buffers.append(EpisodeBuffer(
            id=i, seed=meta.get("seed"), options=meta.get("options") or None, observations=episode.observations,
            actions=episode.actions, rewards=rewards[episode_steps(i)], terminations=episode.terminations,
            truncations=episode.truncations, infos=episode.infos or None))
        extras.append({k: v for k, v in meta.items() if k not in own})
    return buffers, extras


def relabel(source: str | Path, method_name: str, params: dict[str, Any], output_id: str, *,
            root: str | Path | None = None, frames: str = "auto", mission: str | None = None,
            action_names: tuple[str, ...] | None = None, cache_dir: Path | None = None,
            out_dir: Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Relabel ``source`` with ``method_name`` (module docstring); returns the summary it writes."""
    from rgvlm.data.minari_import import from_minari
    from rgvlm.data.minari_store import check_writable, open_minari, write_minari
    from rgvlm.envs import LEARNER_ENV_ID
    from rgvlm.evaluation.label_quality import label_quality
    from rgvlm.rewards.base import quantise_rewards, save_rewards
    from rgvlm.rewards.label_stage import check_method, label_with
    from rgvlm.rewards.registry import METHODS

    started = time.perf_counter()
    # Every setting first: the method and its sections, the output id and place, the source.
    method, config, lvlm = check_method(method_name, params)
    target = check_writable(output_id, root, overwrite)
    try:
        mdataset = open_minari(source, root)
    except OSError as error:  # FileNotFoundError says what is missing; any other: an unreadable file
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"Minari dataset {str(source)!r} cannot be opened ({type(error).__name__}: {error}); its "
                         "HDF5 file is damaged or truncated: copy or collect it again") from error
    if Path(mdataset.storage.data_path).resolve().parent == target.resolve():
        raise ValueError(f"--output {output_id!r} is the source dataset itself: relabel into a new id")
    spec = mdataset.env_spec
    if method.needs_suite_observations and (spec is None or spec.id != LEARNER_ENV_ID):
        ready = [name for name, m in METHODS.items() if not m.needs_suite_observations]
        raise ValueError(f"method {method_name!r} reads the suite's symbolic observations (grid and carried object), "
                         f"which only a dataset of {LEARNER_ENV_ID} has ({mdataset.spec.dataset_id}'s environment: "
                         f"{spec.id if spec else 'none'}); methods that label any dataset: {', '.join(ready)}")
    dataset = from_minari(mdataset, frames=frames, mission=mission, action_names=action_names)
    # The output is written with the source's spec only where it can be recreated; else with the
    # observation and action spaces alone (recover_environment() then has nothing to rebuild), and
    # the summary and the dataset's metadata say why. Decided here, before the first query.
    dropped = dataset.source.get("env_spec_problem")
    out_spec = None if dropped else spec
    out_dir = Path(out_dir) if out_dir is not None else RELABEL_OUTPUTS / output_id
    cache_dir = Path(cache_dir) if cache_dir is not None else RELABEL_CACHE / method.name
    try:
        result = label_with(method, config, lvlm, dataset, cache_dir, out_dir)
    finally:
        close = getattr(dataset.frames, "close", None)
        if close is not None:
            close()
    rewards = quantise_rewards(result.rewards)  # the same bytes as the reward file beside it
    save_rewards(out_dir, result)
    buffers, extras = relabelled_buffers(mdataset, rewards, dataset.episode_steps)
    # The source's own action words travel with it (rgvlm.data.minari_import reads them).
    carried = {key: mdataset.storage.metadata[key] for key in ("action_names",) if key in mdataset.storage.metadata}
    write_minari(
        output_id, buffers, env=out_spec, observation_space=mdataset.observation_space,
        action_space=mdataset.action_space, root=root, overwrite=overwrite, episode_metadata=extras,
        extra_metadata={"rgvlm_relabel": {"source": mdataset.spec.dataset_id, "method": method.name,
                                          "lvlm": result.provenance.get("lvlm"),
                                          "env_spec": _spec_note(spec, dropped)}, **carried},
        description=(f"{mdataset.spec.dataset_id} relabelled by rgvlm with the reward method {method.name!r} "
                     f"({(result.provenance.get('lvlm') or {}).get('backend', 'no LVLM')}); everything else as in the source."),
        algorithm_name=mdataset.storage.metadata.get("algorithm_name"),
    )
    summary = _finite({
        "method": method.name,
        "source": {"dataset": str(source), **dataset.source},
        "output": {"dataset_id": output_id, "path": str(target), "env_spec": _spec_note(spec, dropped)},
        "episodes": len(dataset.episodes),
        "transitions": dataset.num_transitions,
        "action_names": list(dataset.action_names),
        "rewards": {"mean": float(rewards.mean()), "min": float(rewards.min()), "max": float(rewards.max())},
        "label_quality": {"ground_truth": dataset.source["ground_truth"],
                          method.name: label_quality(dataset, rewards, result.values),
                          "source_rewards": label_quality(dataset, dataset.rewards)},
        "cost": result.cost,
        "provenance": result.provenance,
        "wall_time_s": round(time.perf_counter() - started, 3),
    })
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rgvlm.relabel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a Minari dataset: a directory, or an id in the local Minari root")
    parser.add_argument("--method", required=True, help="a registered reward method (rgvlm/rewards/registry.py)")
    parser.add_argument("--output", required=True, help="id of the relabelled Minari dataset, e.g. me/task-rg_vlm-v0")
    parser.add_argument("--params", default=str(paths.PARAMS),
                        help="params file with the method's section and `labelling` (default: params.yaml)")
    parser.add_argument("--root", default=None, help="Minari root (default: $MINARI_DATASETS_PATH, else ~/.minari/datasets)")
    parser.add_argument("--frames", default="auto",
                        help="auto (image observations if any, else replay), replay, observation or observation:<key>")
    parser.add_argument("--mission", default=None, help="the instruction of every episode, when observations hold none")
    parser.add_argument("--action-names", default=None,
                        help="comma-separated words for actions 0..n-1 (default: from the environment)")
    parser.add_argument("--cache-dir", default=None, help="LVLM response cache (default: outputs/lvlm_cache/relabel/<method>)")
    parser.add_argument("--out-dir", default=None, help="summary and reward files (default: outputs/relabel/<output>)")
    parser.add_argument("--force", action="store_true", help="replace an existing output dataset")
    args = parser.parse_args(argv)

    from rgvlm.params import load_params

    names = tuple(n.strip() for n in args.action_names.split(",")) if args.action_names else None
    try:
        summary = relabel(args.source, args.method, load_params(args.params), args.output, root=args.root,
                          frames=args.frames, mission=args.mission, action_names=names, cache_dir=args.cache_dir,
                          out_dir=args.out_dir, overwrite=args.force)
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad input: the message says what to fix
        print(f"python -m rgvlm.relabel: {error}", file=sys.stderr)
        return 2
    quality = summary["label_quality"][summary["method"]]
    cost = summary["cost"]
    print(f"relabelled {summary['episodes']} episodes, {summary['transitions']} transitions of {args.source} with "
          f"{summary['method']} into {args.output}: {cost.get('lvlm_calls', 0)} LVLM calls, "
          f"{cost.get('cache_hits', 0)} cache hits, ~${cost.get('estimated_cost_usd', 0.0)}; label quality against "
          f"{summary['label_quality']['ground_truth']}: AUROC {quality['auroc_completion']}, "
          f"Spearman {quality['spearman_progress']}; summary in {Path(args.out_dir or RELABEL_OUTPUTS / args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
