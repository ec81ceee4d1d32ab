"""Size and write time of the multi-run stack checkpoint: the format before issue 14 and now, in one process.

The stack is the one the training stage builds from a params file's ``train`` section (every
reward set and baseline, each with its seeds: ``TrainConfig.seeds_for``), on a small dataset
generated with that file's ``env`` section (the same grid, hence the same networks), after
``--steps`` updates (Adam's moments exist). The ``extra`` payload is what the training stage adds
at its last ``checkpoint_every`` step: the runs' fingerprints and the log so far. Both formats are
written ``--repeats`` times, alternately, to the same folder; medians are reported.

- ``before``: ``save_state_atomic({**trainer.state_dict(), "extra": ...})`` (the state cloned first),
  at every ``checkpoint_every`` step;
- ``after``: :func:`rgvlm.rl.multirun.save_multirun` (the live tensors, no clone), at a
  ``checkpoint_every`` step once ``checkpoint_interval_s`` has passed since the last write.
  How many writes a whole training makes is projected from the measured seconds per stack update
  (``--seconds-per-update`` to use another, e.g. 1 / ``updates_per_s`` of training.csv).

``tensor_bytes`` is the floor: the parameters, target critic and Adam state exact resume needs.

    python -m benchmarks.checkpoint_size                     # the CPU profile (params.yaml)
    python -m benchmarks.checkpoint_size --params profiles/gpu.yaml --seconds-per-update 0.02
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rgvlm.atomic import write_json_atomic
from rgvlm.data.collect import collect_dataset, params_record
from rgvlm.data.storage import load_dataset, save_dataset
from rgvlm.params import dataset_config, env_config, load_params, train_config
from rgvlm.paths import ROOT
from rgvlm.rl.diagnostics import DIAGNOSTIC_NAMES
from rgvlm.rl.iql import save_state_atomic
from rgvlm.rl.multirun import METRIC_NAMES, MultiRunIQL, save_multirun, tensor_bytes
from rgvlm.rl.runs import run_fingerprint
from rgvlm.rl.training import TrainingJob, baseline_weights, iql_config_for


def save_before(trainer: MultiRunIQL, path: Path, extra: dict) -> None:
    """The stack checkpoint as written before issue 14 (a cloned state_dict)."""
    save_state_atomic({**trainer.state_dict(), "extra": dict(extra)}, path)


def writes_per_training(num_steps: int, every: int, interval_s: float, seconds_per_update: float) -> int:
    """Stack checkpoints one training makes (the loop of ``rgvlm.rl.runs._train_stack``)."""
    written, last = 0, 0.0
    for step in range(every, num_steps, every):
        if step * seconds_per_update - last >= interval_s:
            written, last = written + 1, step * seconds_per_update
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="params file (train and env sections)")
    parser.add_argument("--steps", type=int, default=3, help="stack updates before writing (timed)")
    parser.add_argument("--repeats", type=int, default=3, help="writes of each format")
    parser.add_argument("--seconds-per-update", type=float, default=None,
                        help="seconds per stack update for the projection (default: measured here)")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    params = load_params(args.params)
    config = train_config(params["train"])
    env = env_config(params["env"])
    small = dataset_config({**params["dataset"], "ks": [1, 2], "episodes_per_k": 4})
    work = Path(tempfile.mkdtemp(prefix="checkpoint-size-"))
    episodes, arrays, stats = collect_dataset(env, small)
    save_dataset(work / "data", {**params_record(env, small), "bot_failures": stats["bot_failures"]}, episodes, arrays)
    data = load_dataset(work / "data")
    iql = iql_config_for(data, config.iql)

    rng = np.random.default_rng(0)
    rewards = {name: rng.random(data.num_transitions).astype(np.float32) for name in config.reward_sets}
    rewards.update({name: rewards[config.reward_sets[0]] for name in config.baselines})
    # Random mission vectors and no held-out episodes: a checkpoint's size does not depend on them.
    table = torch.randn(len(data.missions), iql.mission_slots, iql.mission_embed_dim)
    stack = TrainingJob(data, {name: rewards[name] for name in config.trained},
                        {name: config.seeds_for(name) for name in config.trained}, iql,
                        baselines={b: baseline_weights(data, b) for b in config.baselines}, mission_table=table,
                        holdout=np.zeros(data.num_transitions, dtype=bool), probe=False).build()
    trainer, runs = stack.trainer, stack.runs
    started = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(stack.data)
    seconds_per_update = args.seconds_per_update or (time.perf_counter() - started) / max(args.steps, 1)

    last = max(range(iql.checkpoint_every, iql.num_steps, iql.checkpoint_every), default=iql.checkpoint_every)
    metrics = [*METRIC_NAMES, *DIAGNOSTIC_NAMES, "updates_per_s", "run_updates_per_s"]
    log = [{"reward_set": n, "seed": s, "step": step, **{m: 0.123456789 for m in metrics}}
           for step in range(iql.log_every, last + 1, iql.log_every) for n, s in runs]
    identity = [{"reward_set": n, **run_fingerprint(iql, rewards[n], data, s)} for n, s in runs]
    extra = {"runs": identity, "log": log}

    sizes: dict[str, list[int]] = {"before": [], "after": []}
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        for fmt in ("before", "after"):
            path = work / f"{fmt}.pt"
            start = time.perf_counter()
            if fmt == "before":
                save_before(trainer, path, extra)
            else:
                save_multirun(trainer, path, extra)
            times[fmt].append(time.perf_counter() - start)
            sizes[fmt].append(path.stat().st_size)
            path.unlink()
    floor = tensor_bytes(trainer.state_dict(copy=False))

    writes = {"before": writes_per_training(iql.num_steps, iql.checkpoint_every, 0.0, seconds_per_update),
              "after": writes_per_training(iql.num_steps, iql.checkpoint_every, iql.checkpoint_interval_s,
                                           seconds_per_update)}
    result = {"params": str(args.params), "runs": len(runs), "num_steps": iql.num_steps,
              "checkpoint_every": iql.checkpoint_every, "checkpoint_interval_s": iql.checkpoint_interval_s,
              "seconds_per_update": seconds_per_update, "tensor_bytes": floor, "log_rows": len(log),
              "torch_threads": torch.get_num_threads()}
    for fmt in ("before", "after"):
        size, seconds = statistics.median(sizes[fmt]), statistics.median(times[fmt])
        result[fmt] = {"bytes": size, "write_s": seconds, "write_s_all": times[fmt], "writes_per_training": writes[fmt],
                       "bytes_per_training": size * writes[fmt], "write_s_per_training": seconds * writes[fmt]}

    mb = 1e6
    print(f"{args.params}: {len(runs)} runs, {iql.num_steps} updates, checkpoint_every {iql.checkpoint_every}, "
          f"checkpoint_interval_s {iql.checkpoint_interval_s:g}; {seconds_per_update:.3f} s per stack update; "
          f"{torch.get_num_threads()} torch threads")
    print(f"resume needs {floor / mb:.1f} MB of tensors (parameters, target critic, Adam moments); "
          f"extra: {len(identity)} fingerprints, {len(log)} log rows")
    print(f"{'format':8} {'MB/ckpt':>9} {'s/ckpt':>8} {'x floor':>8} {'writes':>7} {'MB/training':>12} {'s/training':>11}")
    for fmt in ("before", "after"):
        r = result[fmt]
        print(f"{fmt:8} {r['bytes'] / mb:9.1f} {r['write_s']:8.3f} {r['bytes'] / floor:8.4f} {r['writes_per_training']:7d} "
              f"{r['bytes_per_training'] / mb:12.1f} {r['write_s_per_training']:11.2f}")
    b, a = result["before"], result["after"]
    ratio = lambda x, y: x / y if y else float("nan")  # noqa: E731
    print(f"after / before: size per checkpoint {ratio(a['bytes'], b['bytes']):.4f}, "
          f"write time per checkpoint {ratio(a['write_s'], b['write_s']):.2f}, "
          f"bytes per training {ratio(a['bytes_per_training'], b['bytes_per_training']):.2f}, "
          f"write time per training {ratio(a['write_s_per_training'], b['write_s_per_training']):.2f}")
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
