"""Embedding-similarity rewards: VLM-RM / "CLIP score" (Rocamonde et al., 2023; arXiv 2310.12921).

The reward of transition t is how close the state it leads to, s_{t+1}, lies to the goal
text in a shared embedding space. RG-VLM compares against this family as "CLIP score";
it costs no LVLM call, so it is the cheap end of the cost/quality trade-off.

Two encoders (``encoder``):

- ``minilm_text`` (default; runs anywhere): s_{t+1} is written out in English from the
  symbolic observation (:mod:`rgvlm.rewards.describe`: doors open or closed, objects next
  to each other, the agent's room, what it faces and carries), and the description and
  the goal text are embedded with the bundled all-MiniLM-L6-v2 (the mission encoder of
  :mod:`rgvlm.rl.missions`, loaded offline). This is a text stand-in for an image-text
  model -- no CLIP weights can be downloaded here -- and the provenance says so.
  ``text_unit`` says what one encoder input is. ``fact`` (default): each sentence of a
  description is embedded once and a state is the normalised mean of its sentences'
  embeddings; the full dataset (~105k observations, ~58k distinct) has ~100 distinct
  sentences, so this takes seconds. ``description``: each distinct whole description is
  one input (the closer analogue of one image = one embedding), but there are ~27k of
  them: about 15 minutes on the 2-core CPU this was measured on, fine on a GPU.
- ``clip``: the real VLM-RM setting. s_{t+1} is rendered by replay (``tile_size`` pixels a
  cell) and embedded with a local CLIP-style model (``CLIPModel``, ``SiglipModel``, ... via
  ``AutoModel`` + ``AutoProcessor``, ``local_files_only``), batched under ``torch.no_grad``.
  A frame depends only on the grid, so each distinct grid is rendered and embedded once.
  Texts longer than the model's context (77 tokens for CLIP; long missions) are truncated.

Goal text (``goal_text``): ``mission`` compares with the whole mission, as VLM-RM compares
with its one goal sentence; ``clause_max`` takes the best match over the mission's
", then "-separated clauses. Both read only the mission, which the learner sees too;
"the first unfinished clause" would need the privileged progress and is not offered.

VLM-RM's goal-baseline regularisation (``alpha``, ``baseline_prompt``): with unit-norm state
embedding x, goal embedding g and baseline embedding b, and P the orthogonal projection onto
the direction g - b,

    R(x) = 1 - 1/2 * || (alpha * P + (1 - alpha) * I) (x - g) ||^2

alpha = 0 is 1 - 1/2 ||x - g||^2 = cos(x, g), the plain CLIP score; alpha = 1 keeps only the
part of x - g along the baseline-to-goal line, so what a state shares with "a generic grid
world" stops counting. The same formula applies to the description embedding.

``reward``: ``state`` is VLM-RM's R(s_{t+1}); ``delta`` is R(s_{t+1}) - R(s_t), a
potential-based variant that rewards the change a step makes (effects here persist, so a
state reward keeps paying after a sub-task is done). ``normalise`` then rescales over the
whole dataset: ``minmax`` to [0, 1] (the scale of the other dense rewards, so fusion
weights mean the same; the default), ``standardise`` to mean 0 / std 1, or ``none``.

The method asks no LVLM: its cost record has 0 calls and 0 tokens, plus the wall time and
how many distinct descriptions or frames were embedded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgvlm import paths
from rgvlm.config import Config, ParamError, param
from rgvlm.data.storage import OfflineDataset
from rgvlm.params import DEVICES, device_name
from rgvlm.rewards.base import RewardResult, empty_cost, exact_threads
from rgvlm.rewards.describe import observation_facts
from rgvlm.rl.missions import ENCODER_NAME, split_mission

METHOD = "embedding"
ENCODERS = ("minilm_text", "clip")
GOAL_TEXTS = ("mission", "clause_max")
REWARD_FORMS = ("state", "delta")
NORMALISATIONS = ("minmax", "standardise", "none")
TEXT_UNITS = ("fact", "description")


@dataclass(frozen=True)
class EmbeddingConfig(Config):
    """How states and goals are embedded and compared (see the module docstring)."""

    SECTION = "embedding"
    encoder: str = param("minilm_text", choices=ENCODERS)
    model: str | None = None  # clip: a local model directory; minilm_text: None (bundled model)
    text_unit: str = param("fact", choices=TEXT_UNITS)  # minilm_text: fact (mean of fact embeddings) | description (whole text)
    goal_text: str = param("mission", choices=GOAL_TEXTS)
    alpha: float = param(0.0, low=0.0, high=1.0)  # VLM-RM goal-baseline regularisation strength, 0 = plain cosine
    baseline_prompt: str = param("a grid world", test=lambda text: bool(text.strip()), expected="a non-empty sentence")
    reward: str = param("state", choices=REWARD_FORMS)  # state: R(s_{t+1}) | delta: R(s_{t+1}) - R(s_t)
    normalise: str = param("minmax", choices=NORMALISATIONS)  # over the whole dataset
    tile_size: int = param(16, low=1, high=64)  # clip: pixels per grid cell of the rendered frames
    batch_size: int = param(128, low=1)  # sentences or frames per encoder call
    device: str = param("auto", test=device_name, expected=DEVICES)

    def check(self) -> None:
        if self.encoder == "clip" and not self.model:
            raise ParamError("embedding.model", self.model, "a local CLIP-style model directory for encoder clip")
        if self.encoder == "minilm_text" and self.model is not None:
            raise ParamError("embedding.model", self.model,
                             "null for encoder minilm_text (it uses the bundled all-MiniLM-L6-v2)")


def resolve_model_path(model: str) -> Path:
    """A relative model path is relative to the repository root (where the pipeline runs)."""
    path = Path(model).expanduser()
    return path if path.is_absolute() else paths.ROOT / path


def config_from_params(raw: Any) -> EmbeddingConfig:
    """Check the ``embedding`` params section and build the config, or raise :class:`ParamError`
    naming ``embedding.<key>`` -- before any model is loaded or frame rendered. Beyond the
    config's own rules, what this machine must have: the CLIP model directory, the GPU asked for."""
    config = EmbeddingConfig.from_section(raw)
    if config.encoder == "clip" and not (resolve_model_path(config.model) / "config.json").is_file():
        raise ParamError("embedding.model", config.model,
                         "an existing local model directory with a config.json (nothing is downloaded)")
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ParamError("embedding.device", config.device, "auto or cpu: this machine has no CUDA GPU")
    return config


# -- the VLM-RM reward ------------------------------------------------------------------
def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def vlm_rm_reward(x: np.ndarray, goal: np.ndarray, baseline: np.ndarray, alpha: float) -> np.ndarray:
    """VLM-RM's goal-baseline regularised reward, ``1 - 1/2 ||(alpha P + (1 - alpha) I)(x - g)||^2``.

    ``x``, ``goal`` and ``baseline`` broadcast against each other ([..., D]); pass unit-norm
    vectors (VLM-RM normalises all three), then alpha = 0 gives exactly cos(x, g). P is the
    orthogonal projection onto d = ``goal - baseline``, so with v = x - g and M = alpha P +
    (1 - alpha) I (symmetric, P idempotent)

        ||M v||^2 = (1 - alpha)^2 ||v||^2 + (1 - (1 - alpha)^2) (d . v)^2 / ||d||^2,

    which needs three dot products per row instead of a D x D matrix per goal, so a batch can
    have one goal per row.
    """
    x, goal, baseline = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x, goal, baseline)))
    direction = goal - baseline
    v = x - goal
    length2 = np.einsum("...d,...d->...", direction, direction)
    along = np.einsum("...d,...d->...", v, direction)
    keep = (1.0 - alpha) ** 2
    if alpha > 0.0 and np.any(length2 <= 0.0):
        raise ValueError("the goal and baseline embeddings coincide: the baseline direction is undefined")
    projected2 = along * along / np.where(length2 > 0, length2, 1.0)
    return 1.0 - 0.5 * (keep * np.einsum("...d,...d->...", v, v) + (1.0 - keep) * projected2)


def normalise_rewards(values: np.ndarray, how: str) -> np.ndarray:
    """Rescale over the whole dataset: ``minmax`` to [0, 1], ``standardise`` to mean 0 / std 1
    (a constant input gives zeros), ``none`` leaves it as is."""
    values = np.asarray(values, dtype=np.float64)
    if how == "none" or values.size == 0:
        return values
    if how == "minmax":
        span = values.max() - values.min()
        return (values - values.min()) / span if span > 0 else np.zeros_like(values)
    if how == "standardise":
        std = values.std()
        return (values - values.mean()) / std if std > 0 else np.zeros_like(values)
    raise ValueError(f"unknown normalisation {how!r}; one of {NORMALISATIONS}")


# -- encoders ---------------------------------------------------------------------------
class MiniLMTextEncoder:
    """Sentences -> unit vectors with the bundled all-MiniLM-L6-v2 (the mission encoder's model,
    loaded by :class:`rgvlm.rl.missions.MissionEmbedder`; nothing is downloaded)."""

    name = ENCODER_NAME

    def __init__(self, device: str = "cpu", batch_size: int = 128, embedder=None):
        from rgvlm.rl.missions import MissionEmbedder

        self.embedder = embedder if embedder is not None else MissionEmbedder(device=device)
        self.batch_size = batch_size

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.embedder.model.get_sentence_embedding_dimension()), dtype=np.float32)
        with exact_threads():  # the same bits whatever the caller's thread count
            vectors = self.embedder.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                                 show_progress_bar=False)
        return unit(vectors)


class ClipEncoder:
    """Images and texts -> unit vectors with a local CLIP-style model (``get_image_features`` /
    ``get_text_features``), batched, under ``torch.no_grad``."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoProcessor

        self.torch = torch
        path = resolve_model_path(model)
        try:
            self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        except (OSError, ValueError) as error:
            raise ParamError("embedding.model", model, f"a loadable local CLIP-style model ({error})") from error
        if not (hasattr(self.model, "get_image_features") and hasattr(self.model, "get_text_features")):
            raise ParamError("embedding.model", model,
                             f"an image-text embedding model (CLIP, SigLIP); got {type(self.model).__name__}")
        self.name = str(model)
        self.device = device
        self.batch_size = batch_size
        # SigLIP was trained on texts padded to the full context; CLIP on texts padded to the batch.
        self.text_padding = "max_length" if "siglip" in str(self.model.config.model_type) else True

    @staticmethod
    def _pooled(output) -> Any:
        # transformers 4.x returns the projected embeddings; 5.x a ModelOutput whose pooler_output holds them.
        return output if hasattr(output, "shape") else output.pooler_output

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.processor(text=texts[start : start + self.batch_size], padding=self.text_padding,
                                   truncation=True, return_tensors="pt")
            with self.torch.no_grad():
                features = self.model.get_text_features(**{k: v.to(self.device) for k, v in batch.items()})
            out.append(self._pooled(features).float().cpu().numpy())
        return unit(np.concatenate(out)) if out else np.zeros((0, 0), dtype=np.float32)

    def embed_images(self, frames: list[np.ndarray]) -> np.ndarray:
        """One batch of uint8 [h, w, 3] frames (the caller batches)."""
        batch = self.processor(images=list(frames), return_tensors="pt")
        with self.torch.no_grad():
            features = self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.device))
        return unit(self._pooled(features).float().cpu().numpy())


# -- states ----------------------------------------------------------------------------
def _needed_observations(dataset: OfflineDataset, reward: str) -> np.ndarray:
    """Rows of ``obs_grid`` the reward reads: every s_{t+1}, and every s_t for ``delta``."""
    rows = dataset.next_obs_index if reward == "state" else np.concatenate([dataset.obs_index, dataset.next_obs_index])
    return np.unique(rows)


def describe_dataset(dataset: OfflineDataset, rows: np.ndarray) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The distinct states of observation ``rows``, each as its tuple of facts, and, per row of
    ``obs_grid``, the index of its state (-1 for rows not asked for). Equal observations are
    described once (about 58k distinct observations of 105k on the full dataset)."""
    by_observation: dict[bytes, int] = {}
    by_facts: dict[tuple[str, ...], int] = {}
    index = np.full(dataset.obs_grid.shape[0], -1, dtype=np.int64)
    for row in rows:
        key = dataset.obs_grid[row].tobytes() + dataset.obs_carry[row].tobytes()
        found = by_observation.get(key)
        if found is None:
            facts = tuple(observation_facts(dataset.obs_grid[row], dataset.obs_carry[row]))
            found = by_observation[key] = by_facts.setdefault(facts, len(by_facts))
        index[row] = found
    return list(by_facts), index


def embed_states(encoder: MiniLMTextEncoder, states: list[tuple[str, ...]], text_unit: str) -> tuple[np.ndarray, int]:
    """Unit embeddings [len(states), D] of described states, and how many texts were embedded.

    ``description``: each state's whole description (its facts joined) is one encoder input.
    ``fact``: each distinct fact is embedded once and a state is the normalised mean of its
    facts' embeddings (a bag-of-sentences embedding, as sentence-transformers' own mean pooling
    is a bag of tokens). The full dataset has ~100 distinct facts but ~27k distinct
    descriptions: seconds instead of tens of minutes on a 2-core CPU.
    """
    if text_unit == "description":
        return encoder.embed_texts([" ".join(facts) for facts in states]), len(states)
    if any(not facts for facts in states):
        raise ValueError("a state without any fact cannot be embedded")
    texts = sorted({fact for facts in states for fact in facts})
    vectors = encoder.embed_texts(texts)
    lookup = {text: i for i, text in enumerate(texts)}
    flat = np.fromiter((lookup[fact] for facts in states for fact in facts), dtype=np.int64)
    counts = np.array([len(facts) for facts in states], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(vectors[flat].astype(np.float64), offsets, axis=0) if len(states) else vectors[:0]
    return unit(sums / counts[:, None] if len(states) else sums), len(texts)


def _embed_frames(dataset: OfflineDataset, rows: np.ndarray, encoder: ClipEncoder, tile_size: int,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render (by replay) and embed the frames of observation ``rows``; each distinct grid once.

    Returns the unit embeddings [distinct grids, D] and, per row of ``obs_grid``, the index of
    its embedding (-1 for rows not asked for). Replayed grids are checked against the stored
    ones, so a changed environment fails loudly instead of scoring the wrong frames.
    """
    from rgvlm.data.replay import replay_dataset_episode

    wanted = np.zeros(dataset.obs_grid.shape[0], dtype=bool)
    wanted[rows] = True
    index = np.full(dataset.obs_grid.shape[0], -1, dtype=np.int64)
    by_grid: dict[bytes, int] = {}
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            chunks.append(encoder.embed_images(pending))
            pending.clear()

    for episode_index, episode in enumerate(dataset.episodes):
        start, count = episode["obs_start"], episode["length"] + 1
        new_times, new_rows = [], []
        for t in range(count):
            row = start + t
            if not wanted[row]:
                continue
            key = dataset.obs_grid[row].tobytes()
            if key in by_grid:
                index[row] = by_grid[key]
            else:
                by_grid[key] = len(by_grid)
                index[row] = by_grid[key]
                new_times.append(t)
                new_rows.append(row)
        if not new_times:
            continue
        replayed = replay_dataset_episode(dataset, episode_index, tile_size, frames=new_times)
        if not np.array_equal(replayed["grid"], dataset.obs_grid[start : start + count]):
            raise ValueError(f"episode {episode_index} ({episode['env_id']}, seed {episode['seed']}): the replay "
                             "does not reproduce the stored observations; was the environment changed?")
        for frame in replayed["frames"]:
            pending.append(frame)
            if len(pending) >= batch_size:
                flush()
    flush()
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    return embeddings, index


# -- goals ------------------------------------------------------------------------------
def goal_texts(missions: list[str], goal_text: str) -> tuple[list[str], np.ndarray]:
    """The distinct goal texts and a [missions, slots] table of indices into them (-1 = unused
    slot): one slot (the whole mission) for ``mission``, one per clause for ``clause_max``."""
    per_mission = [[m] if goal_text == "mission" else split_mission(m) for m in missions]
    texts = list(dict.fromkeys(t for parts in per_mission for t in parts))
    lookup = {t: i for i, t in enumerate(texts)}
    table = np.full((len(missions), max((len(p) for p in per_mission), default=1)), -1, dtype=np.int64)
    for i, parts in enumerate(per_mission):
        table[i, : len(parts)] = [lookup[t] for t in parts]
    return texts, table


def score_states(states: np.ndarray, state_index: np.ndarray, goals: np.ndarray, goal_table: np.ndarray,
                 mission_index: np.ndarray, baseline: np.ndarray, alpha: float, chunk: int = 8192) -> np.ndarray:
    """R(state, goal) per entry: the state embedding ``states[state_index]`` against every goal slot
    of mission ``mission_index``, the best slot kept (one slot for whole-mission goals)."""
    out = np.empty(state_index.shape[0], dtype=np.float64)
    for start in range(0, state_index.shape[0], chunk):
        x = states[state_index[start : start + chunk]]
        slots = goal_table[mission_index[start : start + chunk]]
        best = np.full(x.shape[0], -np.inf)
        for j in range(slots.shape[1]):
            used = slots[:, j] >= 0
            if used.any():
                best[used] = np.maximum(best[used], vlm_rm_reward(x[used], goals[slots[used, j]], baseline, alpha))
        out[start : start + chunk] = best
    return out


# -- the method -------------------------------------------------------------------------
def label_embedding(dataset: OfflineDataset, config: EmbeddingConfig = EmbeddingConfig(),
                    encoder: MiniLMTextEncoder | ClipEncoder | None = None) -> tuple[RewardResult, dict]:
    """Reward every transition with the VLM-RM similarity of s_{t+1} to the goal text.

    ``encoder`` reuses an already loaded encoder (tests; the notebook), else one is built from
    ``config``. Returns the reward set (method ``embedding``) and statistics: counts of
    distinct observations / descriptions / frames / goal texts embedded, the time each phase
    took, and the raw (un-normalised) reward range.
    """
    from rgvlm.params import resolve_device

    started = time.perf_counter()
    device = resolve_device(config.device)
    if encoder is None:
        encoder = (MiniLMTextEncoder(device, config.batch_size) if config.encoder == "minilm_text"
                   else ClipEncoder(config.model, device, config.batch_size))
    loaded = time.perf_counter()

    rows = _needed_observations(dataset, config.reward)
    stats: dict[str, Any] = {"observations": int(rows.size)}
    if config.encoder == "minilm_text":
        described_states, state_index = describe_dataset(dataset, rows)
        described = time.perf_counter()
        states, texts = embed_states(encoder, described_states, config.text_unit)
        stats.update(distinct_descriptions=len(described_states), texts_embedded=texts,
                     describe_s=round(described - loaded, 3))
    else:
        states, state_index = _embed_frames(dataset, rows, encoder, config.tile_size, config.batch_size)
        described = loaded
        stats.update(frames_embedded=int(states.shape[0]))
    embedded = time.perf_counter()

    goals_text, goal_table = goal_texts(dataset.missions, config.goal_text)
    text_vectors = encoder.embed_texts([*goals_text, config.baseline_prompt])
    goals, baseline = text_vectors[:-1], text_vectors[-1]
    goals_embedded = time.perf_counter()
    mission = dataset.mission_of_step
    after = score_states(states, state_index[dataset.next_obs_index], goals, goal_table, mission, baseline, config.alpha)
    raw = after
    if config.reward == "delta":
        raw = after - score_states(states, state_index[dataset.obs_index], goals, goal_table, mission, baseline,
                                   config.alpha)
    rewards = normalise_rewards(raw, config.normalise).astype(np.float32)
    finished = time.perf_counter()

    stats.update(
        goal_texts_embedded=len(goals_text) + 1,
        load_s=round(loaded - started, 3),
        embed_states_s=round(embedded - described, 3),
        embed_goals_s=round(goals_embedded - embedded, 3),
        score_s=round(finished - goals_embedded, 3),
        raw_min=float(raw.min()) if raw.size else 0.0,
        raw_max=float(raw.max()) if raw.size else 0.0,
        raw_mean=float(raw.mean()) if raw.size else 0.0,
    )
    cost = {**empty_cost(finished - started), **{k: v for k, v in stats.items() if not k.startswith("raw_")}}
    model_name = encoder.name if config.encoder == "clip" else ENCODER_NAME
    source = ("cosine-style similarity of an English description of s_{t+1} (from the symbolic observation) to "
              "the goal text, both embedded with a sentence encoder (a text stand-in for VLM-RM's CLIP score)"
              if config.encoder == "minilm_text" else
              "VLM-RM / CLIP score: similarity of the rendered frame of s_{t+1} to the goal text in a CLIP-style "
              "image-text embedding space")
    provenance = {
        "method": METHOD,
        "source": source,
        "lvlm": None,
        "embedding_model": {"encoder": config.encoder, "model": model_name, "device": device},
        "alpha": config.alpha,
        "baseline_prompt": config.baseline_prompt,
        "goal_text": config.goal_text,
        "reward": config.reward,
        "normalise": config.normalise,
        "config": asdict(config),
    }
    return RewardResult(METHOD, rewards, provenance=provenance, cost=cost), stats


def label(dataset: OfflineDataset, clients: None, config: EmbeddingConfig, out_dir: Path,
          failure_policy: None = None) -> tuple[RewardResult, dict]:
    """The labelling stage's entry (:mod:`rgvlm.rewards.registry`); no LVLM (``clients`` and
    ``failure_policy`` are None)."""
    return label_embedding(dataset, config)


def diagnostic(dataset: OfflineDataset, result: RewardResult, out_dir: Path) -> Any:
    """What the encoder saw: one episode of the dataset (k = 2, successful if any), each step whose
    next state reads differently from the one before, with the description of that next state
    (text path) and its reward."""
    import pandas as pd

    from rgvlm.rewards.describe import describe_observation

    episodes = dataset.episodes
    episode = max(range(len(episodes)), key=lambda i: (episodes[i]["k"] == 2, episodes[i]["success"], -i))
    steps = dataset.episode_steps(episode)
    rows, previous = [], None
    for step in range(steps.start, steps.stop):
        obs = dataset.next_obs_index[step]
        text = describe_observation(dataset.obs_grid[obs], dataset.obs_carry[obs])
        if text != previous:
            rows.append({"t": step - steps.start, "reward": round(float(result.rewards[step]), 3),
                         "description of s_t+1": text})
        previous = text
    return pd.DataFrame(rows).head(12).style.set_caption(f"mission: {episodes[episode]['mission']}")
