"""IQL training throughput: one run at a time (eager) vs the multi-run stack, in one process.

Both paths use the same network (the ``train`` section of a params file), the same batch
size and the same batches (the counter-based sampler of ``rgvlm.rl.multirun``) on the real
dataset in ``data/``, on the same device. Reported: total run-updates per second of

(a) ``eager``: an :class:`IQLLearner` per run, each trained for ``--steps`` updates in turn;
(b) ``stack``: :class:`MultiRunIQL` with every run stacked (vmap), eager PyTorch; ``stack_chunk<c>``
    the same, ``c`` runs per vmapped slice; ``stack_shared_encoder`` (or ``stack_own_encoders``) and
    ``stack_chunk<c>_...``: the same with the other setting of ``train.shared_encoder`` than the
    params file's (one encoder per run, or one per network);
(c) ``stack_compiled``: the same with ``torch.compile`` (``--compile``);
(d) ``stack_cuda_graphs``: compiled in mode "reduce-overhead" (CUDA graphs; GPU only);
(b') ``stack_bf16`` (``--precision fp32 bf16``): the stack with ``train.precision`` bf16 (bfloat16
    autocast, :func:`rgvlm.rl.iql.precision_context`); and, in the same process, blocks of fp32 and bf16
    updates alternated (``precision_blocks``), whose per-block ratio is the one to read on a shared machine;
(e) ``d3rlpy_bc`` / ``d3rlpy_cql`` (``--d3rlpy``): the peer library's DiscreteBC and DiscreteCQL
    (:mod:`rgvlm.peer.d3rlpy_baseline`) on the same data, batch and MLP width, one run at a time
    (d3rlpy has no multi-run trainer), in the same process and thread count;

and each ratio to (a), and of the stack to each d3rlpy algorithm.

The roofline, in the same process: the floating-point work of one run-update (every network's
forward and backward and the target critics' forward), counted with
``torch.utils.flop_counter.FlopCounterMode`` over one update of the stack and divided by the runs
(it counts the matmul family only: mm, bmm, addmm, convolutions; element-wise ops, gathers and
Adam are left out, so it is a floor of the work), cross-checked on one eager learner's update;
the achieved GFLOP/s of each stacked row (work x run-updates/s); and this machine's measured
matmul peak (a large square matmul at the benchmark's thread count, best of a few, fp32 and
bf16 where the CPU has native bf16), so that the report says which share of the peak the
trainer reaches. ``torch.profiler`` records one update of the stack (after warm-up): its top
operators by self time go to the report and, as a table, to ``reports/benchmarks/iql_profile.txt``.

Written to ``reports/benchmarks/iql_throughput.json``.

    python -m benchmarks.iql_throughput --runs 25 --steps 20             # CPU
    python -m benchmarks.iql_throughput --runs 41 --steps 20 --precision fp32 bf16  # and bf16
    python -m benchmarks.iql_throughput --runs 25 --steps 200 --compile  # GPU: adds (c) and (d)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from rgvlm.atomic import write_json_atomic
from rgvlm.data import load_dataset
from rgvlm.params import PRECISIONS, load_params, resolve_device, train_config
from rgvlm.paths import ROOT
from rgvlm.rl.iql import IQLLearner, TransitionBatch, bf16_native
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL, sample_indices
from rgvlm.rl.training import TrainingJob, iql_config_for


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stack(job: TrainingJob, data: DeviceTransitions, steps, warmup, **changes) -> float:
    """Run-updates per second of the stacked trainer of ``job`` with ``changes`` (its config, its
    trainer's flags), on the shared ``data``."""
    trainer = dataclasses.replace(job, **changes).build(data).trainer
    device, seeds = trainer.device, trainer.seeds
    for _ in range(warmup):  # compilation and graph capture happen here
        trainer.update(trainer.sample(data))
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        trainer.update(trainer.sample(data))
    synchronize(device)
    return len(seeds) * steps / (time.perf_counter() - started)


def update_flops(trainer: MultiRunIQL, data: DeviceTransitions) -> int:
    """Matmul-family FLOPs of one update of ``trainer`` (every run)."""
    with FlopCounterMode(display=False) as counter:
        trainer.update(trainer.sample(data))
    return int(counter.get_total_flops())


def eager_update_flops(config, data: DeviceTransitions, device) -> tuple[int, dict[str, int]]:
    """The same count over one eager IQLLearner update (one run): the cross-check of the stack's, and
    its split by network. (Under vmap the module tracker attributes some ops to two modules, so the
    stack's split does not add up; the eager one does. The target critic runs through the critic's
    module class, so it is counted with the critic.)"""
    learner = IQLLearner(config, device=device, seed=0)
    batch = single_batch(data, torch.tensor([0], device=device), 0, config.batch_size)
    learner.update(batch)
    with FlopCounterMode(display=False) as counter:
        learner.update(batch)
    by_network = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()
                  if name != "Global" and "." not in name}
    return int(counter.get_total_flops()), by_network


def roofline_blocks(trainer: MultiRunIQL, data: DeviceTransitions, device: torch.device, flops_per_update: int,
                    blocks: int, updates: int, size: int) -> list[dict]:
    """The stack's GFLOP/s and the fp32 matmul peak measured alternately, block after block: on a
    machine shared with other work the two see the same contention, so their ratio is steadier
    than either alone."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    out = []
    for _ in range(blocks):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(updates):
            trainer.update(trainer.sample(data))
        synchronize(device)
        achieved = flops_per_update * updates / (time.perf_counter() - started) / 1e9
        started = time.perf_counter()
        a @ b
        synchronize(device)
        peak = 2 * size**3 / (time.perf_counter() - started) / 1e9
        out.append({"achieved_gflops": round(achieved, 2), "peak_gflops": round(peak, 1),
                    "fraction": round(achieved / peak, 4)})
    return out


def interleaved_blocks(trainers: dict[str, MultiRunIQL], data: DeviceTransitions, device: torch.device,
                       blocks: int, updates: int) -> list[dict[str, float]]:
    """Run-updates/s of each trainer, ``updates`` updates each in turn, block after block: on a
    machine shared with other work the trainers of one block see about the same contention, so the
    per-block ratios are steadier than rows timed one after the other."""
    out = []
    for _ in range(blocks):
        block = {}
        for name, trainer in trainers.items():
            synchronize(device)
            started = time.perf_counter()
            for _ in range(updates):
                trainer.update(trainer.sample(data))
            synchronize(device)
            block[name] = round(trainer.num_runs * updates / (time.perf_counter() - started), 2)
        out.append(block)
    return out


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` square ``size`` matmuls: the machine's practical peak."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # first call: allocation, oneDNN/cuBLAS kernel selection
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def profile_update(trainer: MultiRunIQL, data: DeviceTransitions, device: torch.device, top: int,
                   table_path: Path) -> list[dict]:
    """torch.profiler over one update of ``trainer`` (warmed up): the ``top`` operators by self
    time, and the table written to ``table_path``."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        trainer.update(trainer.sample(data))
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        trainer.update(trainer.sample(data))
        synchronize(device)
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(
        f"torch.profiler: one MultiRunIQL.update of {trainer.num_runs} runs on {device}, "
        f"{torch.get_num_threads()} threads (python benchmarks/iql_throughput.py), sorted by {key}\n\n"
        + events.table(sort_by=key, row_limit=top) + "\n")
    ranked = sorted(events, key=lambda e: -getattr(e, key))[:top]
    return [{"op": e.key, "self_ms": round(getattr(e, key) / 1000, 3), "share": round(getattr(e, key) / total, 3),
             "calls": e.count} for e in ranked]


def single_batch(data, seed_tensor, step: int, batch_size: int) -> TransitionBatch:
    """Run ``seed``'s batch at ``step``, exactly as the stack draws it, without the run dimension."""
    device = seed_tensor.device
    indices = sample_indices(seed_tensor, torch.tensor(step, device=device), batch_size, data.num_train)
    stacked = data.batch(indices, torch.zeros(1, dtype=torch.int64, device=device))
    # Optional fields (the n-step discount, BC weights) are None when the stack does not use them.
    fields = {k: getattr(stacked, k) for k in stacked.__dataclass_fields__}
    return TransitionBatch(**{k: None if v is None else v[0] for k, v in fields.items()})


def time_eager(config, seeds, data, device, steps, warmup) -> float:
    """Run-updates per second of eager learners trained one after the other."""
    total = 0.0
    for seed in seeds:
        learner = IQLLearner(config, device=device, seed=seed)
        seed_tensor = torch.tensor([seed], device=device)
        for step in range(warmup):
            learner.update(single_batch(data, seed_tensor, step, config.batch_size))
        synchronize(device)
        started = time.perf_counter()
        for step in range(warmup, warmup + steps):
            learner.update(single_batch(data, seed_tensor, step, config.batch_size))
        synchronize(device)
        total += time.perf_counter() - started
    return len(seeds) * steps / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="params file whose train section is used")
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--steps", type=int, default=20, help="timed updates per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[4],
                        help="also time the stack vmapped over this many runs at a time")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (and CUDA graphs on a GPU)")
    parser.add_argument("--d3rlpy", action="store_true", help="also time d3rlpy DiscreteBC and DiscreteCQL")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul that measures the peak")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default, one per core); the peak is measured at the same count")
    parser.add_argument("--roofline-blocks", type=int, default=5,
                        help="blocks of the stack's updates alternated with one peak matmul each")
    parser.add_argument("--profile-top", type=int, default=15, help="operators of the profile kept, by self time")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS,
                        help="time the stack at each train.precision (fp32 is the params file's unless it sets one)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks" / "iql_throughput.json"))
    parser.add_argument("--profile-out", default=None,
                        help="the profile's table (default: iql_profile.txt next to --out)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()  # other work on the machine: absolute speeds depend on it, ratios less

    train = train_config(load_params(args.params)["train"])
    device = torch.device(resolve_device(args.device))
    dataset = load_dataset(ROOT / "data")
    config = iql_config_for(dataset, train.iql)
    # Random mission vectors: the encoder's cost does not depend on their values.
    table = torch.randn(len(dataset.missions), config.mission_slots, config.mission_embed_dim,
                        generator=torch.Generator().manual_seed(0))
    seeds = list(range(args.runs))
    # One reward row for every run, every transition sampled (no held-out episodes), the profile's n-step targets.
    job = TrainingJob(dataset, {"zeros": np.zeros(dataset.num_transitions, np.float32)}, seeds, config, device,
                      mission_table=table, holdout=np.zeros(dataset.num_transitions, dtype=bool), probe=False)
    data = job.transitions()

    results = {"eager": time_eager(config, seeds, data, device, args.steps, args.warmup)}
    results["stack"] = time_stack(job, data, args.steps, args.warmup)
    # The profile's encoder sharing and the other one (train.shared_encoder), at each chunk size.
    other = dataclasses.replace(config, shared_encoder=not config.shared_encoder)
    other_name = "own_encoders" if config.shared_encoder else "shared_encoder"
    results[f"stack_{other_name}"] = time_stack(job, data, args.steps, args.warmup, config=other)
    for chunk in args.chunk_sizes:
        results[f"stack_chunk{chunk}"] = time_stack(job, data, args.steps, args.warmup, chunk_size=chunk)
        results[f"stack_chunk{chunk}_{other_name}"] = time_stack(job, data, args.steps, args.warmup, config=other,
                                                                 chunk_size=chunk)
    lower = [p for p in args.precision if p != config.precision]
    for precision in lower:
        with_precision = dataclasses.replace(config, precision=precision)
        results[f"stack_{precision}"] = time_stack(job, data, args.steps, args.warmup, config=with_precision)
        for chunk in args.chunk_sizes:
            results[f"stack_chunk{chunk}_{precision}"] = time_stack(job, data, args.steps, args.warmup,
                                                                    config=with_precision, chunk_size=chunk)
    if args.compile:
        results["stack_compiled"] = time_stack(job, data, args.steps, args.warmup, compile=True)
        if device.type == "cuda":
            results["stack_cuda_graphs"] = time_stack(job, data, args.steps, args.warmup, cuda_graphs=True)
    if args.d3rlpy:
        from rgvlm.peer.d3rlpy_baseline import Conversion, time_updates, to_mdp_dataset

        conversion = Conversion.for_dataset(dataset, table.numpy(), "entities", None, "float16")
        converted = to_mdp_dataset(dataset, table.numpy(), conversion=conversion)
        hidden = [config.hidden_dim] * config.num_layers
        for algo in ("bc", "cql"):
            timed = time_updates(algo, converted, args.steps * 5, args.warmup, config.batch_size, hidden, config.lr)
            results[f"d3rlpy_{algo}"] = timed["updates_per_s"]
    # The roofline of the committed network (the rows above with the params file's encoder sharing).
    trainer = job.build(data).trainer
    trainer.update(trainer.sample(data))
    total_flops = update_flops(trainer, data)
    per_run = total_flops / len(seeds)
    eager_flops, by_network = eager_update_flops(config, data, device)
    blocks = roofline_blocks(trainer, data, device, total_flops, args.roofline_blocks,
                             max(1, args.steps // args.roofline_blocks), args.peak_size)
    peaks = {"fp32": matmul_peak(device, torch.float32, args.peak_size)}
    native_bf16 = bf16_native(device)
    if native_bf16:
        peaks["bf16"] = matmul_peak(device, torch.bfloat16, args.peak_size)
    precision_blocks = None
    if lower:
        trainers = {config.precision: trainer}
        for precision in lower:
            trainers[precision] = dataclasses.replace(
                job, config=dataclasses.replace(config, precision=precision)).build(data).trainer
            trainers[precision].update(trainers[precision].sample(data))
        blocks_by_precision = interleaved_blocks(trainers, data, device, args.roofline_blocks,
                                                 max(1, args.steps // args.roofline_blocks))
        precision_blocks = {
            "blocks": blocks_by_precision,
            "ratio_to_" + config.precision + "_median": {
                p: float(np.median([blk[p] / blk[config.precision] for blk in blocks_by_precision])) for p in lower},
        }
    profile_path = Path(args.profile_out) if args.profile_out else Path(args.out).with_name("iql_profile.txt")
    top_ops = profile_update(trainer, data, device, args.profile_top, profile_path)
    same_network = [k for k in results if k == "eager" or (k.startswith("stack") and other_name not in k)]
    achieved = {k: results[k] * per_run / 1e9 for k in same_network}
    # Each row against the peak of the precision its matmuls ran in (the FLOPs are the same).
    row_precision = {k: next((p for p in lower if k.endswith("_" + p)), config.precision) for k in same_network}
    row_peak = {k: peaks.get(p, peaks["fp32"]) for k, p in row_precision.items()}
    best = max((k for k in same_network if k.startswith("stack")), key=lambda k: results[k])
    roofline = {
        "flops_per_run_update": int(per_run),
        "flops_counted_with": ("torch.utils.flop_counter.FlopCounterMode over one MultiRunIQL.update of the stack, "
                               "divided by the runs; matmul-family ops only (mm, bmm, addmm, conv), so element-wise "
                               "ops, gathers and Adam are not in it"),
        "flops_per_run_update_eager_learner": eager_flops,
        "flops_per_run_update_by_network": by_network,
        "achieved_gflops": {k: round(v, 2) for k, v in achieved.items()},
        "peak_matmul": f"{args.peak_size}x{args.peak_size} @ {args.peak_size}x{args.peak_size}, best of 5, "
                       f"{torch.get_num_threads()} threads, same process",
        "peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "bf16_native": native_bf16,
        "fraction_of_fp32_peak": {k: round(v / peaks["fp32"], 4) for k, v in achieved.items()},
        "fraction_of_own_precision_peak": {k: round(v / row_peak[k], 4) for k, v in achieved.items()},
        "statement": (f"the trainer ({best}) reaches {100 * achieved[best] / row_peak[best]:.1f}% of this machine's "
                      f"{row_precision[best]} matmul peak ({row_peak[best]:.0f} GFLOP/s measured in the same run)"),
        # The stack (params' settings) and one peak matmul alternately: the ratio under the same load.
        "interleaved_blocks": blocks,
        "interleaved_fraction_median": float(np.median([blk["fraction"] for blk in blocks])),
        # The stack at each --precision, alternated block by block (run-updates/s) and the median ratio.
        "precision_blocks": precision_blocks,
    }
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "runs": args.runs,
        "timed_updates_per_run": args.steps,
        "warmup_updates": args.warmup,
        "params": str(Path(args.params).resolve().relative_to(ROOT)) if Path(args.params).resolve().is_relative_to(ROOT) else args.params,
        "iql": asdict(config),
        "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()],
                         "cores": os.cpu_count()},
        "roofline": roofline,
        "profile_top_ops": top_ops,
        "profile_table": str(profile_path.resolve().relative_to(ROOT)) if profile_path.resolve().is_relative_to(ROOT)
        else str(profile_path),
        "run_updates_per_s": {k: round(v, 2) for k, v in results.items()},
        "speedup_vs_eager": {k: round(v / results["eager"], 3) for k, v in results.items() if k != "eager"},
        # Every stacked variant against every d3rlpy algorithm: "<stack row>/<d3rlpy row>".
        "stack_vs_d3rlpy": {f"{s}/{d}": round(results[s] / results[d], 3) for s in results if s.startswith("stack")
                            for d in results if d.startswith("d3rlpy")},
        "command": "python -m benchmarks.iql_throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    write_json_atomic(Path(args.out), report)
    print(json.dumps({k: report[k] for k in ("device", "runs", "run_updates_per_s", "speedup_vs_eager",
                                            "stack_vs_d3rlpy", "load_average", "roofline", "profile_top_ops")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
