"""Can a trained run's critic rank single actions? Measured on the pipeline's trained runs.

The critic diagnostic (``rgvlm.rl.diagnostics``) says how well V ranks *states*; IQL's policy
step needs the advantages to rank *actions* at the same state. The dataset knows which of its
actions were the bot's and which were random, for two kinds of episode:

* ``expert`` episodes: every action is the bot's (a near-shortest path to the next sub-task);
* ``partial`` episodes: the bot until ``j`` sub-tasks are done, then uniformly random actions
  (``j`` and the number of random steps are re-drawn from the episode's own generator, exactly
  as ``rgvlm.data.collect`` drew them; the script checks the count it recovers).

On the held-out episodes of the critic diagnostic (never trained on), for every trained run
(``outputs/models/runs.json``):

* ``q_agree_expert``: the share of expert-episode states whose critic argmax (min of the target
  twin Q, what IQL's advantages use) is the bot's action; chance is 1/6. ``pi_agree_expert``: the
  same for the run's policy (its greedy action).
* ``adv_auroc_bot_vs_random``: in partial episodes, the AUROC of A(s, a) = Q(s, a) - V(s)
  separating the bot's actions (positives) from the random ones; 0.5 = no ranking.
* ``reranked_agree_expert@B``: the same as ``pi_agree_expert`` for the policy re-ranked by the
  critic, argmax(log pi(a|s) + B A(s, a)) — the exact form of the policy step IQL's weighted
  regression approximates, which reads the critic's value of every action.
* ``weight_bot`` / ``weight_random``: mean advantage weight min(exp(beta A), clip) of each:
  how much the policy step actually down-weights random actions.

    python -m experiments.action_ranking [--models outputs/models] [--out reports/tuning/action_ranking.json]

Reads the runs' dataset (``data/``, or the one ``python -m experiments.learning --save-models`` names)
and its collection parameters from its manifest; writes JSON and prints a table. CPU, minutes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from experiments.cli import command
from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.data import load_dataset
from rgvlm.data.storage import OfflineDataset
from rgvlm.envs.seeds import dataset_seed
from rgvlm.evaluation.label_quality import auroc
from rgvlm.params import dataset_config
from rgvlm.rl.diagnostics import holdout_mask
from rgvlm.rl.iql import _gather_actions, advantage_weights
from rgvlm.rl.missions import mission_embedder
from rgvlm.rl.runs import load_learner


def random_action_mask(dataset: OfflineDataset, base_seed: int, wander_steps: tuple[int, int]) -> np.ndarray:
    """Bool ``[N]``: the transitions of partial episodes taken by uniformly random actions.

    Re-draws each partial episode's ``j`` (``rgvlm.data.collect.collect_episode``: the first draw
    of the generator seeded by (dataset seed, k, index)); the random phase starts at the first
    state with ``j`` sub-tasks done. Checks that the recovered phase has the drawn number of
    steps (or fewer, where the time limit cut it) and that the episode's seed is the index's."""
    random = np.zeros(dataset.num_transitions, dtype=bool)
    before = dataset.progress_before
    index_in_k: dict[int, int] = {}
    for episode in dataset.episodes:
        k = episode["k"]
        index = index_in_k.get(k, 0)
        index_in_k[k] = index + 1
        if episode["seed"] != dataset_seed(base_seed, index):
            raise ValueError(f"episode {index} of k={k} has seed {episode['seed']}: the dataset is not in collection order")
        if episode["kind"] != "partial":
            continue
        rng = np.random.default_rng([base_seed, k, index])
        stop = int(rng.integers(0, k))
        wander = int(rng.integers(wander_steps[0], wander_steps[1] + 1))
        start, length = episode["step_start"], episode["length"]
        phase = np.flatnonzero(before[start:start + length] >= stop)
        if phase.size > wander or (phase.size and phase[0] + phase.size != length):
            raise ValueError(f"partial episode {index} of k={k}: recovered {phase.size} random steps, drew {wander}")
        random[start + phase] = True
    return random


#: Inverse temperatures of the re-ranked policy argmax(log pi(a|s) + beta A(s, a)) (0: the policy's own).
RERANK_BETAS = (1.0, 3.0, 10.0, 30.0)


@torch.no_grad()
def run_scores(learner, grid, carry, mission, action, beta: float, clip: float) -> dict[str, np.ndarray]:
    s = learner.critic_view(grid, carry, mission)
    twin = learner.target_critic(*s)  # [M, 2, A]
    q = twin.min(dim=1).values  # [M, A]
    v = learner.value(*s)
    adv = _gather_actions(twin, action).min(dim=1).values - v
    log_pi = torch.log_softmax(learner.policy(grid, carry, mission), dim=1)
    # The policy step IQL approximates has the closed form pi(a|s) ~ pi_data(a|s) exp(beta A(s, a)):
    # with six actions it can be applied exactly, reading the critic's ranking of every action
    # rather than only the in-data differences the weighted regression sees.
    reranked = {beta_eval: (log_pi + beta_eval * (q - v[:, None])).argmax(1).numpy() for beta_eval in RERANK_BETAS}
    return {
        "q_argmax": q.argmax(1).numpy(),
        "pi_argmax": log_pi.argmax(1).numpy(),
        "reranked_argmax": reranked,
        "adv": adv.numpy(),
        "weight": advantage_weights(adv, beta, clip).numpy(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=paths.MODELS)
    parser.add_argument("--out", type=Path, default=paths.REPORTS / "tuning" / "action_ranking.json")
    args = parser.parse_args(argv)

    runs_record = json.loads((args.models / "runs.json").read_text())
    iql = runs_record["iql"]
    # The pipeline's runs were trained on data/; python -m experiments.learning --save-models names its dataset.
    dataset = load_dataset(Path(runs_record.get("data", paths.DATA)))
    data_cfg = dataset_config(dataset.manifest["dataset"])
    random = random_action_mask(dataset, data_cfg.seed, tuple(data_cfg.wander_steps))
    kind = np.array([e["kind"] for e in dataset.episodes])[dataset.episode_of_step]
    k_of = np.array([e["k"] for e in dataset.episodes])[dataset.episode_of_step]
    held = holdout_mask(dataset, iql["holdout_fraction"])
    expert = held & (kind == "expert")
    partial = held & (kind == "partial")
    idx = np.flatnonzero(expert | partial)
    print(f"held-out: {int(expert.sum())} expert transitions, {int(partial.sum())} partial "
          f"({int((partial & random).sum())} random)")

    embedder = mission_embedder(iql["mission_encoder"], device="cpu")
    table = torch.as_tensor(embedder.embed(dataset.missions), dtype=torch.float32)
    obs = dataset.obs_index[idx]
    grid = torch.as_tensor(dataset.obs_grid[obs])
    carry = torch.as_tensor(dataset.obs_carry[obs])
    mission = table[torch.as_tensor(dataset.mission_of_step[idx])]
    action_np = dataset.actions[idx].astype(np.int64)
    action = torch.as_tensor(action_np)
    is_expert, is_random, k_sel = expert[idx], random[idx], k_of[idx]
    is_bot_partial = partial[idx] & ~is_random

    rows = []
    for reward_set, seed in runs_record["runs"]:
        learner = load_learner(args.models, reward_set, seed, "cpu")
        out = run_scores(learner, grid, carry, mission, action, iql["beta"], iql["adv_clip"])
        row = {"reward_set": reward_set, "seed": seed}
        for group, ks in (("", None), ("_k1", (1,)), ("_k2_3", (2, 3)), ("_k4_6", (4, 5, 6))):
            sel = is_expert if ks is None else is_expert & np.isin(k_sel, ks)
            row["q_agree_expert" + group] = float((out["q_argmax"][sel] == action_np[sel]).mean())
            row["pi_agree_expert" + group] = float((out["pi_argmax"][sel] == action_np[sel]).mean())
        for beta_eval, argmax in out["reranked_argmax"].items():
            row[f"reranked_agree_expert@{beta_eval:g}"] = float((argmax[is_expert] == action_np[is_expert]).mean())
        both = is_bot_partial | is_random
        row["adv_auroc_bot_vs_random"] = auroc(out["adv"][both], is_bot_partial[both])
        row["weight_bot"] = float(out["weight"][is_bot_partial].mean())
        row["weight_random"] = float(out["weight"][is_random].mean())
        rows.append(row)
        print(f"{reward_set:>16} {seed}: Q agrees {row['q_agree_expert']:.2f} (k1 {row['q_agree_expert_k1']:.2f}, "
              f"k4-6 {row['q_agree_expert_k4_6']:.2f}), pi {row['pi_agree_expert']:.2f}; "
              f"AUROC bot>random {row['adv_auroc_bot_vs_random']:.2f}; weights {row['weight_bot']:.2f} / "
              f"{row['weight_random']:.2f}", flush=True)

    frame = pd.DataFrame(rows)
    summary = frame.drop(columns="seed").groupby("reward_set", sort=False).agg(["mean", "min", "max"])
    print(summary.round(2).to_string())
    write_json_atomic(args.out, {
        "command": command("action_ranking", argv),
        "models": str(args.models), "held_out": {"expert": int(expert.sum()), "partial": int(partial.sum()),
                                                 "partial_random": int((partial & random).sum())},
        "beta": iql["beta"], "runs": rows,
        "summary": {name: {col: float(frame[frame.reward_set == name][col].mean()) for col in frame.columns
                           if col not in ("reward_set", "seed")} for name in frame.reward_set.unique()},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
