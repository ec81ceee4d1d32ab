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
(e) ``d3rlpy_bc`` / ``d3rlpy_cql`` (``--d3rlpy``): the peer library's DiscreteBC and DiscreteCQL
    (:mod:`rgvlm.peer.d3rlpy_baseline`) on the same data, batch and MLP width, one run at a time
    (d3rlpy has no multi-run trainer), in the same process and thread count;

and each ratio to (a), and of the stack to each d3rlpy algorithm. Written to ``reports/benchmarks/iql_throughput.json``.

    python benchmarks/iql_throughput.py --runs 25 --steps 20             # CPU
    python benchmarks/iql_throughput.py --runs 25 --steps 200 --compile  # GPU: adds (c) and (d)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgvlm.data import load_dataset  # noqa: E402
from rgvlm.data.storage import write_json_atomic  # noqa: E402
from rgvlm.params import load_params, resolve_device, train_config  # noqa: E402
from rgvlm.rl.iql import IQLLearner, TransitionBatch  # noqa: E402
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL, sample_indices  # noqa: E402
from rgvlm.rl.runs import iql_config_for  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stack(config, seeds, data, device, steps, warmup, **flags) -> float:
    """Run-updates per second of the stacked trainer."""
    trainer = MultiRunIQL(config, seeds, [0] * len(seeds), device=device, **flags)
    for _ in range(warmup):  # compilation and graph capture happen here
        trainer.update(trainer.sample(data))
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        trainer.update(trainer.sample(data))
    synchronize(device)
    return len(seeds) * steps / (time.perf_counter() - started)


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
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks" / "iql_throughput.json"))
    args = parser.parse_args(argv)

    train = train_config(load_params(args.params)["train"])
    device = torch.device(resolve_device(args.device))
    dataset = load_dataset(ROOT / "data")
    config = iql_config_for(dataset, train.iql)
    # Random mission vectors: the encoder's cost does not depend on their values.
    table = torch.randn(len(dataset.missions), config.mission_slots, config.mission_embed_dim,
                        generator=torch.Generator().manual_seed(0))
    data = DeviceTransitions(dataset, [np.zeros(dataset.num_transitions, np.float32)], table, device,
                             n_step=config.n_step, gamma=config.gamma)  # the profile's n-step targets
    seeds = list(range(args.runs))

    results = {"eager": time_eager(config, seeds, data, device, args.steps, args.warmup)}
    results["stack"] = time_stack(config, seeds, data, device, args.steps, args.warmup)
    # The profile's encoder sharing and the other one (train.shared_encoder), at each chunk size.
    other = dataclasses.replace(config, shared_encoder=not config.shared_encoder)
    other_name = "own_encoders" if config.shared_encoder else "shared_encoder"
    results[f"stack_{other_name}"] = time_stack(other, seeds, data, device, args.steps, args.warmup)
    for chunk in args.chunk_sizes:
        results[f"stack_chunk{chunk}"] = time_stack(config, seeds, data, device, args.steps, args.warmup,
                                                    chunk_size=chunk)
        results[f"stack_chunk{chunk}_{other_name}"] = time_stack(other, seeds, data, device, args.steps,
                                                                 args.warmup, chunk_size=chunk)
    if args.compile:
        results["stack_compiled"] = time_stack(config, seeds, data, device, args.steps, args.warmup, compile=True)
        if device.type == "cuda":
            results["stack_cuda_graphs"] = time_stack(config, seeds, data, device, args.steps, args.warmup,
                                                      cuda_graphs=True)
    if args.d3rlpy:
        from rgvlm.peer.d3rlpy_baseline import Conversion, time_updates, to_mdp_dataset

        conversion = Conversion.for_dataset(dataset, table.numpy(), "entities", None, "float16")
        converted = to_mdp_dataset(dataset, table.numpy(), conversion=conversion)
        hidden = [config.hidden_dim] * config.num_layers
        for algo in ("bc", "cql"):
            timed = time_updates(algo, converted, args.steps * 5, args.warmup, config.batch_size, hidden, config.lr)
            results[f"d3rlpy_{algo}"] = timed["updates_per_s"]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "runs": args.runs,
        "timed_updates_per_run": args.steps,
        "warmup_updates": args.warmup,
        "params": str(Path(args.params).resolve().relative_to(ROOT)) if Path(args.params).resolve().is_relative_to(ROOT) else args.params,
        "iql": asdict(config),
        "run_updates_per_s": {k: round(v, 2) for k, v in results.items()},
        "speedup_vs_eager": {k: round(v / results["eager"], 3) for k, v in results.items() if k != "eager"},
        # Every stacked variant against every d3rlpy algorithm: "<stack row>/<d3rlpy row>".
        "stack_vs_d3rlpy": {f"{s}/{d}": round(results[s] / results[d], 3) for s in results if s.startswith("stack")
                            for d in results if d.startswith("d3rlpy")},
        "command": "python benchmarks/iql_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    write_json_atomic(Path(args.out), report)
    print(json.dumps({k: report[k] for k in ("device", "runs", "run_updates_per_s", "speedup_vs_eager",
                                            "stack_vs_d3rlpy")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
