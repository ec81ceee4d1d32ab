# %% [markdown]
# # 4b. A peer baseline no one here wrote: d3rlpy DiscreteBC and DiscreteCQL
#
# The same offline dataset, converted to a d3rlpy `MDPDataset` (`rgvlm/peer/d3rlpy_baseline.py`
# documents the conversion: each state is the entity encoder's parameter-free features plus the
# flattened clause embeddings of the mission; successes are terminal, time-outs are timeouts),
# trained by d3rlpy's own `fit` with its own networks (an MLP on that vector), then rolled out by
# the project's evaluation code on exactly the start states and policies of stage 5, whose tables
# and figures show these rows beside IQL. d3rlpy is installed beside the project by `make setup`
# (see `INSTALL_COMMANDS`: it pins an old gymnasium, so it is installed without its pins).

# %% tags=["parameters"]
from rgvlm.params import load_params

peer = load_params()["peer"]
evaluation = load_params()["evaluation"]

# %%
import pandas as pd
import torch

from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.data import load_dataset
from rgvlm.evaluation import evaluation_episodes
from rgvlm.params import EnvConfig, evaluation_config
from rgvlm.peer.d3rlpy_baseline import Conversion, peer_config, require_d3rlpy, to_mdp_dataset, train_and_evaluate
from rgvlm.rewards import load_rewards
from rgvlm.rl.missions import MissionEmbedder

config, eval_config = peer_config(peer), evaluation_config(evaluation)
d3rlpy = require_d3rlpy()
torch.set_num_threads(config.threads)
data = load_dataset(paths.DATA)
embedder = MissionEmbedder(device="cpu")
table = embedder.embed(data.missions)
rewards = load_rewards(paths.REWARDS, config.reward_set).rewards
conversion = Conversion.for_dataset(data, table, "entities", None, "float16")
dataset = to_mdp_dataset(data, table, rewards=rewards, conversion=conversion)
episodes = evaluation_episodes(data, eval_config.ks, eval_config.splits, eval_config.episodes_per_k, eval_config.seed)
print(f"d3rlpy {d3rlpy.__version__}: {data.num_transitions} transitions -> {conversion.observation_dim}-dim states; "
      f"{len(config.algos) * len(config.seeds)} runs of {config.num_steps} updates; {len(episodes)} episodes")

# %%
records, runs, settings, seconds = train_and_evaluate(
    dataset, conversion, config.algos, config.seeds, config.num_steps, config.hyperparameters(), episodes,
    EnvConfig(**data.manifest["env"]), embedder.embed, eval_config.policies, eval_config.seed)
frame = pd.DataFrame(records)
paths.PEER.mkdir(parents=True, exist_ok=True)
frame.to_csv(paths.PEER / "episodes.csv", index=False)
write_json_atomic(paths.METRICS / "peer.json", {
    "library": f"d3rlpy {d3rlpy.__version__}", "reward_set": config.reward_set, "conversion": conversion.describe(),
    "settings": settings, "runs": runs, "seconds": seconds, "torch_threads": config.threads,
})
frame.groupby(["policy", "reward_set", "split", "k"])["completion"].mean().unstack("k").round(3)
