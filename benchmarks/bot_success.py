"""The expert bot's success rate per k on the suite, over many seeds.

    python benchmarks/bot_success.py [--seeds 200] [--expert-view agent|state]

Writes reports/benchmarks/bot_success.json. Seeds are taken from the validation range so
they overlap neither the dataset nor the fresh evaluation layouts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.envs import MAX_SUBTASKS, SuiteBot, env_id_for, make_env, reset_quietly
from rgvlm.envs.seeds import validation_seed
from rgvlm.params import EXPERT_VIEWS


def bot_episode(env, seed: int, state_view: bool = False) -> tuple[bool, int, str | None]:
    reset_quietly(env, seed)
    bot = SuiteBot(env, state_view=state_view)
    steps = 0
    try:
        while True:
            _, _, terminated, truncated, _ = env.step(bot.replan())
            steps += 1
            if terminated or truncated:
                return bool(terminated), steps, None if terminated else "time limit"
    except Exception as error:  # noqa: BLE001 - reported, not hidden
        return False, steps, f"{type(error).__name__}: {error}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--expert-view", choices=EXPERT_VIEWS, default="agent",
                        help="what the bot plans from (dataset.expert_view)")
    args = parser.parse_args()
    rows = []
    for k in range(1, MAX_SUBTASKS + 1):
        env = make_env(env_id_for(k))
        started = time.perf_counter()
        results = [bot_episode(env, validation_seed(0, i), args.expert_view == "state") for i in range(args.seeds)]
        lengths = [steps for ok, steps, _ in results if ok]
        failures = [(validation_seed(0, i), why) for i, (ok, _, why) in enumerate(results) if not ok]
        rows.append({
            "k": k, "episodes": args.seeds, "success_rate": sum(ok for ok, _, _ in results) / args.seeds,
            "mean_length": round(float(np.mean(lengths)), 2), "max_length": int(max(lengths)),
            "time_limit": env.unwrapped.max_steps, "seconds": round(time.perf_counter() - started, 2),
            "failures": failures[:10],
        })
        print(f"k={k}: success {rows[-1]['success_rate']:.3f} over {args.seeds} seeds, "
              f"mean length {rows[-1]['mean_length']}, limit {rows[-1]['time_limit']}")
    suffix = "" if args.expert_view == "agent" else f"_{args.expert_view}_view"
    write_json_atomic(paths.BENCHMARKS / f"bot_success{suffix}.json",
                      {"seeds_per_k": args.seeds, "expert_view": args.expert_view, "per_k": rows})


if __name__ == "__main__":
    main()
