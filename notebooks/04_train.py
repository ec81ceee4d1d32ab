# %% [markdown]
# # 4. Language-conditioned IQL, one run per (reward set, seed)
#
# Discrete-action IQL (`rgvlm/rl/iql.py`): twin Q with Polyak targets, V by expectile
# regression, policy by advantage-weighted regression. Missions are embedded once per clause
# by the frozen all-MiniLM-L6-v2 sentence encoder; observations are the symbolic full grid and
# the carried object. Runs resume from `outputs/models/` if interrupted. Training curves go to
# `reports/metrics/training.csv` (`dvc plots show`).

# %% tags=["parameters"]
from rgvlm.params import load_params

train = load_params()["train"]

# %%
from dataclasses import asdict

import pandas as pd
import torch

from rgvlm import paths
from rgvlm.data import load_dataset
from rgvlm.data.storage import write_json_atomic
from rgvlm.params import resolve_device, train_config
from rgvlm.rewards import load_rewards
from rgvlm.rl.missions import ENCODER_NAME, MissionEmbedder
from rgvlm.rl.runs import iql_config_for, train_run

config = train_config(train)
device = resolve_device(config.device)
data = load_dataset(paths.DATA)
reward_sets = {name: load_rewards(paths.REWARDS, name) for name in config.reward_sets}  # fail early if missing
iql_config = iql_config_for(data, config.iql)
embedder = MissionEmbedder(device="cpu")
mission_table = torch.as_tensor(embedder.embed(data.missions), device=device)
print(f"device {device}; {data.num_transitions} transitions; {len(data.missions)} missions; "
      f"{len(reward_sets) * len(config.seeds)} runs of {iql_config.num_steps} updates")

# %%
rows = []
for name, result in reward_sets.items():
    for seed in config.seeds:
        rows += train_run(data, mission_table, name, result.rewards, seed, iql_config, device, paths.MODELS)
        last = rows[-1] if rows else {}
        print(f"{name:>24} seed {seed}: step {last.get('step')}, {last.get('updates_per_s', 0):.0f} updates/s")
write_json_atomic(paths.MODELS / "runs.json", {
    "reward_sets": list(config.reward_sets), "seeds": list(config.seeds), "device": device,
    "iql": asdict(iql_config), "mission_encoder": ENCODER_NAME,
})
log = pd.DataFrame(rows)
paths.METRICS.mkdir(parents=True, exist_ok=True)
log.rename(columns={"reward_set": "method"}).to_csv(paths.METRICS / "training.csv", index=False, float_format="%.6g")
log.groupby("reward_set").last()
