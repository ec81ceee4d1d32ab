# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Language-conditioned IQL: every (reward set, seed) run at once
#
# Discrete-action IQL (`rgvlm/rl/iql.py`): twin Q with Polyak targets, V by expectile
# regression, policy by advantage-weighted regression. Missions are embedded once per clause
# (`train.mission_encoder`: word codes, or the frozen all-MiniLM-L6-v2 sentence encoder);
# observations are the symbolic full grid and the carried object. All runs train together as one stack of parameters (`rgvlm/rl/multirun.py`:
# `torch.func.vmap` over the runs, the dataset resident on the device; `train.compile` and
# `train.cuda_graphs` are opt-in). An interrupted stage resumes from `outputs/models/`. Training
# curves go to `reports/metrics/training.csv` (`dvc plots show`), each checkpoint's size and write
# time to `reports/metrics/checkpoints.json`.

# %% tags=["parameters"]
from rgvlm.params import load_params

train = load_params()["train"]

# %%
import pandas as pd

from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.data import load_dataset
from rgvlm.params import resolve_device, train_config
from rgvlm.rewards import load_rewards
from rgvlm.rl.diagnostics import DIAGNOSTIC_NAMES
from rgvlm.rl.iql import config_record
from rgvlm.rl.missions import mission_embedder
from rgvlm.rl.runs import checkpoint_summary, train_runs
from rgvlm.rl.training import baseline_weights, iql_config_for, learner_missions

config = train_config(train)
device = resolve_device(config.device)
data = load_dataset(paths.DATA)
reward_sets = {name: load_rewards(paths.REWARDS, name).rewards for name in config.reward_sets}  # fail early if missing
# The BC baselines' policies ignore rewards; their critics train on the sparse reward (diagnostics only).
bc_weights = {name: baseline_weights(data, name) for name in config.baselines}
reward_sets.update({name: load_rewards(paths.REWARDS, "sparse").rewards for name in config.baselines})
seeds = {name: config.seeds_for(name) for name in config.trained}
iql_config = iql_config_for(data, config.iql)
embedder = mission_embedder(iql_config.mission_encoder, device="cpu")
# train.mission_view: the whole mission, or the clauses its own observations have not shown done.
mission_table, observation_missions = learner_missions(data, iql_config)
print(f"device {device}; {data.num_transitions} transitions; {len(data.missions)} missions "
      f"({len(mission_table)} as the learner reads them: {iql_config.mission_view}); "
      f"{sum(map(len, seeds.values()))} runs of {iql_config.num_steps} updates")

# %%
def progress(rows):
    print(f"step {rows[0]['step']}: {rows[0]['run_updates_per_s']:.0f} run-updates/s, "
          f"mean critic loss {sum(r['critic_loss'] for r in rows) / len(rows):.4f}")


rows = train_runs(data, mission_table, reward_sets, seeds, iql_config, device, paths.MODELS, compile=config.compile,
                  cuda_graphs=config.cuda_graphs, on_log=progress, bc_weights=bc_weights,
                  checkpoint_report=paths.METRICS / "checkpoints.json", observation_missions=observation_missions)
print(checkpoint_summary(paths.METRICS / "checkpoints.json"))
write_json_atomic(paths.MODELS / "runs.json", {
    "reward_sets": list(config.reward_sets), "baselines": list(config.baselines),
    "runs": [[name, seed] for name, name_seeds in seeds.items() for seed in name_seeds], "device": device,
    "iql": config_record(iql_config), "mission_encoder": embedder.name, "compile": config.compile,
    "cuda_graphs": config.cuda_graphs,
})
columns = ["reward_set", "seed", "step", "value_loss", "critic_loss", "policy_loss", "q_mean", "v_mean", "adv_mean",
           *DIAGNOSTIC_NAMES, "updates_per_s", "run_updates_per_s"]
log = pd.DataFrame(rows).reindex(columns=columns)
paths.METRICS.mkdir(parents=True, exist_ok=True)
log.to_csv(paths.METRICS / "training.csv", index=False, float_format="%.6g")
log.groupby("reward_set").last()
