# %% [markdown]
# # 2e. Embedding-similarity rewards: VLM-RM / CLIP score
#
# The cheapest VLM-based reward RG-VLM is compared with: no LVLM is asked anything. The reward of
# a transition is how close the state it leads to lies to the goal text in a shared embedding
# space (Rocamonde et al., 2023, arXiv 2310.12921), with VLM-RM's optional goal-baseline
# projection (`alpha`, `baseline_prompt`; alpha = 0 is plain cosine similarity). Code:
# `rgvlm/rewards/embedding.py`.
#
# The embedded default (`encoder: minilm_text`) has no image model, since no CLIP weights can be
# downloaded here: each state is *written out* in English from the symbolic observation (doors
# open or closed, objects next to each other, the agent's room, what it faces and carries;
# `rgvlm/rewards/describe.py`, never the privileged progress) and embedded with the same
# all-MiniLM-L6-v2 sentence encoder as the mission. It is a text stand-in for CLIP, and the
# provenance says so. `encoder: clip` with `model:` a local CLIP-style checkpoint scores the
# rendered frames instead, as VLM-RM does (best on a GPU).

# %% tags=["parameters"]
from rgvlm.params import load_params

embedding = load_params()["embedding"]

# %%
from rgvlm import paths
from rgvlm.data import load_dataset
from rgvlm.data.storage import write_json_atomic
from rgvlm.rewards import save_rewards
from rgvlm.rewards.embedding import config_from_params, label_embedding

data = load_dataset(paths.DATA)
config = config_from_params(embedding)  # fails here, before any model is loaded, on a bad setting
result, stats = label_embedding(data, config)
save_rewards(paths.LABELS / "embedding", result)
write_json_atomic(paths.METRICS / "labeling_embedding.json", {"provenance": result.provenance, "cost": result.cost})
result.cost

# %% [markdown]
# ## What the encoder saw
#
# One episode of the dataset: each step whose next state reads differently from the one before,
# with the description of that next state (text path) and its reward.

# %%
import pandas as pd

from rgvlm.rewards.describe import describe_observation

episode = max(range(len(data.episodes)), key=lambda i: (data.episodes[i]["k"] == 2, data.episodes[i]["success"], -i))
steps = data.episode_steps(episode)
rows, previous = [], None
for step in range(steps.start, steps.stop):
    obs = data.next_obs_index[step]
    text = describe_observation(data.obs_grid[obs], data.obs_carry[obs])
    if text != previous:
        rows.append({"t": step - steps.start, "reward": round(float(result.rewards[step]), 3), "description of s_t+1": text})
    previous = text
print("mission:", data.episodes[episode]["mission"])
with pd.option_context("display.max_colwidth", None):
    display(pd.DataFrame(rows).head(12))  # noqa: F821 (IPython)
