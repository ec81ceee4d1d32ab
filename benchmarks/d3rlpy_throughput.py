"""d3rlpy training throughput: DiscreteBC and DiscreteCQL updates per second on the converted
offline dataset (the peer baseline of ``experiments/d3rlpy_peer.py``).

The dataset goes through the documented conversion of :mod:`rgvlm.peer.d3rlpy_baseline`;
each algorithm is built with the same settings as the peer experiment (batch 64, an MLP with
``--hidden`` units, lr 1e-3) and trained with d3rlpy's public loop pieces,
``dataset.sample_transition_batch`` then ``algo.update``, for ``--warmup`` untimed and
``--steps`` timed updates. Reported per algorithm: updates per second including d3rlpy's
batch sampling (what ``fit`` achieves) and the update alone. Written to
``reports/benchmarks/d3rlpy_throughput.json``; compare with ``iql_throughput.json`` (the
project's learner). The machine's load average is recorded: on a shared CPU the numbers are
lower bounds.

    python benchmarks/d3rlpy_throughput.py --hidden 128 128               # the 3,600-episode dataset
    python benchmarks/d3rlpy_throughput.py --data /tmp/tiny --steps 20    # any dataset directory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgvlm.atomic import write_json_atomic  # noqa: E402
from rgvlm.data import load_dataset  # noqa: E402
from rgvlm.peer.d3rlpy_baseline import (  # noqa: E402
    INSTALL_COMMANDS,
    Conversion,
    require_d3rlpy,
    time_updates,
    to_mdp_dataset,
)

LARGE_DATASET = ROOT / "outputs" / "experiments" / "data" / "19c918a080f7"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(LARGE_DATASET), help="dataset directory")
    parser.add_argument("--algos", nargs="+", default=["cql", "bc"], choices=["cql", "bc"])
    parser.add_argument("--steps", type=int, default=200, help="timed updates per algorithm")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="hidden units of d3rlpy's MLP")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mission-dim", type=int, default=None, help="per-slot mission projection (default: full)")
    parser.add_argument("--obs-dtype", choices=["float32", "float16"], default="float16")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks" / "d3rlpy_throughput.json"))
    args = parser.parse_args(argv)

    d3rlpy = require_d3rlpy()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_dataset(args.data)
    # Random mission vectors (as iql_throughput.py): the cost of an update does not depend on their values.
    table = np.random.default_rng(0).standard_normal((len(data.missions), 6, 384)).astype(np.float32)
    conversion = Conversion.for_dataset(data, table, "entities", args.mission_dim, args.obs_dtype)
    dataset = to_mdp_dataset(data, table, conversion=conversion)
    convert_s = time.perf_counter() - started
    load_before = os.getloadavg()
    results = {f"d3rlpy_{algo}": time_updates(algo, dataset, args.steps, args.warmup, args.batch_size, args.hidden,
                                              args.lr, args.seed) for algo in args.algos}
    data_path = Path(args.data).resolve()
    report = {
        "command": "python benchmarks/d3rlpy_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "d3rlpy": d3rlpy.__version__,
        "install": list(INSTALL_COMMANDS),
        "torch": torch.__version__,
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                  f"{os.cpu_count()} cores)",
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "dataset": {"path": str(data_path.relative_to(ROOT)) if data_path.is_relative_to(ROOT) else str(data_path),
                    "num_episodes": len(data.episodes), "num_transitions": data.num_transitions},
        "conversion": conversion.describe(),
        "convert_seconds": round(convert_s, 2),
        "batch_size": args.batch_size,
        "hidden_units": args.hidden,
        "learning_rate": args.lr,
        "timed_updates": args.steps,
        "warmup_updates": args.warmup,
        "results": results,
    }
    write_json_atomic(Path(args.out), report)
    print(json.dumps({k: report[k] for k in ("device", "load_average_1min", "convert_seconds")}, indent=2))
    print(json.dumps({name: {k: v for k, v in r.items() if k not in ("config", "architecture")}
                      for name, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
