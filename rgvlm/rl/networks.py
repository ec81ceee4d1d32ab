"""Encoders and network heads for language-conditioned discrete-action IQL.

Inputs (the fixed contract shared with the data pipeline):

* ``grid``    -- uint8 ``[B, H, W, 3]`` fully observed symbolic MiniGrid grid, channels
  ``(object type 0..10, colour 0..5, state 0..3)``.
* ``carry``   -- uint8 ``[B, 2]`` = ``(object type 0..10, colour 0..5)`` of the carried object.
* ``mission`` -- float ``[B, S, E]``: the mission split into ``S`` clause slots, each clause
  embedded by a frozen sentence encoder; unused slots are all-zero vectors.

Every module here is a plain ``nn.Module`` without Python-side state: no buffers that change
during ``forward``, no in-place ops, no ``.item()``. That keeps them usable with
``torch.func.functional_call`` + ``torch.func.vmap`` over stacked parameters of many runs.

By default each head (:class:`DiscreteCritic`, :class:`ValueNetwork`, :class:`DiscretePolicy`)
owns its own :class:`StateEncoder`; nothing is shared between critic, value and policy (and the
two Q functions of the twin critic also have separate encoders), which is the standard IQL set-up
and avoids one loss shaping the features of another. With ``shared=True`` the critic and value
heads have no encoder of their own (:class:`EncodedState`): they read the state features of the
policy's encoder, detached (``IQLConfig.shared_encoder``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

# The choices of train.encoder and train.grounding are checked by IQLConfig, in the config layer.
from rgvlm.params import GROUNDINGS, STATE_ENCODERS

# Sizes of the MiniGrid symbolic vocabularies (minigrid.core.constants).
NUM_OBJECT_TYPES = 11
NUM_COLOURS = 6
NUM_STATES = 4


def mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    """``num_layers`` hidden ``Linear -> ReLU`` blocks of width ``hidden_dim``, then a Linear."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.ReLU()]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


AGENT_TYPE = 10  # minigrid OBJECT_TO_IDX["agent"]; its cell's state channel is the direction
DOOR_TYPE = 4  # minigrid OBJECT_TO_IDX["door"]
OPEN_STATE = 0  # minigrid STATE_TO_IDX["open"] (a door's state channel: open 0, closed 1, locked 2)
WALL_TYPE = 2  # minigrid OBJECT_TO_IDX["wall"]: what lies outside the grid
# MiniGrid's direction vectors (x, y): 0 east, 1 south, 2 west, 3 north.
DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))


# Cached: the pure-Python build takes about a second for 11x11, and every encoder needs one.
@functools.lru_cache(maxsize=8)
def egocentric_index_table(height: int, width: int) -> torch.Tensor:
    """For every (agent cell, direction): which grid cell each cell of the egocentric window shows.

    The window is ``(2H-1) x (2W-1)`` with the agent at its centre facing up, so the whole grid
    stays visible from any position. Returns int64 ``[H*W*4, (2H-1)*(2W-1)]``; the index
    ``H*W`` stands for "outside the grid" (read as a wall).
    """
    rows, cols = 2 * height - 1, 2 * width - 1
    table = torch.full((height * width * 4, rows * cols), height * width, dtype=torch.int64)
    for y in range(height):
        for x in range(width):
            for d, (fx, fy) in enumerate(DIRECTIONS):
                rx, ry = DIRECTIONS[(d + 1) % 4]  # the agent's right
                for r in range(rows):
                    for c in range(cols):
                        ahead, right = (height - 1) - r, c - (width - 1)
                        sx, sy = x + ahead * fx + right * rx, y + ahead * fy + right * ry
                        if 0 <= sx < width and 0 <= sy < height:
                            table[(y * width + x) * 4 + d, r * cols + c] = sy * width + sx
    return table


class EgocentricView(nn.Module):
    """Re-expresses the full grid around the agent: agent at the centre, facing up.

    An MLP then sees "wall ahead" or "the red door two cells to the left" on the same input
    units wherever the agent stands, which an allocentric flat grid would force it to learn
    separately for every position and heading. Pure indexing (argmax + gather): no parameters,
    differentiable-free and vmap-friendly.
    """

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.register_buffer("table", egocentric_index_table(height, width).clone(), persistent=False)

    @property
    def out_shape(self) -> tuple[int, int]:
        return 2 * self.height - 1, 2 * self.width - 1

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """long ``[B, H, W, 3]`` -> long ``[B, 2H-1, 2W-1, 3]``."""
        batch = grid.shape[0]
        cells = grid.reshape(batch, self.height * self.width, 3)
        agent = (cells[..., 0] == AGENT_TYPE).to(torch.int64).argmax(dim=1)  # [B]
        direction = cells.gather(1, agent.view(batch, 1, 1).expand(batch, 1, 3))[:, 0, 2]
        outside = torch.tensor([WALL_TYPE, 0, 0], dtype=cells.dtype, device=cells.device).expand(batch, 1, 3)
        padded = torch.cat([cells, outside], dim=1)  # [B, H*W + 1, 3]
        source = self.table[agent * 4 + direction]  # [B, window]
        view = padded.gather(1, source.unsqueeze(-1).expand(-1, -1, 3))
        return view.reshape(batch, *self.out_shape, 3)


class ObservationEncoder(nn.Module):
    """Symbolic grid + carried object -> feature vector ``[B, out_dim]``.

    Each cell is embedded as the sum of a type, a colour and a state embedding, giving an
    ``[B, embed_dim, H, W]`` image that goes through two 3x3 convolutions (padding 1, so the
    spatial size is kept and absolute positions survive the flatten). With ``channels=0`` the
    cells are one-hot encoded, flattened and mixed by one Linear (an MLP encoder, many times
    cheaper on a CPU; the CPU profile uses it). With ``egocentric=True`` the grid is first
    re-expressed around the agent (:class:`EgocentricView`). The carried object is
    embedded with the *same* type/colour tables (a carried red key should look like a red key
    on the floor) and concatenated with the flattened conv features before the final Linear.
    """

    def __init__(
        self,
        height: int = 11,
        width: int = 11,
        embed_dim: int = 16,
        channels: int = 32,
        out_dim: int = 128,
        egocentric: bool = False,
    ) -> None:
        super().__init__()
        self.height = height
        self.width = width
        self.channels = channels
        self.view = EgocentricView(height, width) if egocentric else None
        if egocentric:  # the layers below see the (2H-1) x (2W-1) window
            height, width = 2 * height - 1, 2 * width - 1
        if channels > 0:
            self.type_embed = nn.Embedding(NUM_OBJECT_TYPES, embed_dim)
            self.colour_embed = nn.Embedding(NUM_COLOURS, embed_dim)
            self.state_embed = nn.Embedding(NUM_STATES, embed_dim)
            self.conv = nn.Sequential(
                nn.Conv2d(embed_dim, channels, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(channels, channels, kernel_size=3, padding=1),
                nn.ReLU(),
            )
            self.out = nn.Linear(channels * height * width + embed_dim, out_dim)
        else:
            # A Linear on one-hot cells equals per-position embeddings summed and flattened,
            # without embedding_dense_backward, which dominated the CPU update time.
            cell = NUM_OBJECT_TYPES + NUM_COLOURS + NUM_STATES
            self.out = nn.Linear(cell * height * width + NUM_OBJECT_TYPES + NUM_COLOURS, out_dim)
            offsets = torch.tensor([0, NUM_OBJECT_TYPES, NUM_OBJECT_TYPES + NUM_COLOURS])
            self.register_buffer("feature_offsets", offsets, persistent=False)
            positions = torch.arange(height * width).repeat_interleave(3) * cell
            self.register_buffer("position_offsets", positions, persistent=False)
            carry = torch.tensor([0, NUM_OBJECT_TYPES]) + cell * height * width
            self.register_buffer("carry_offsets", carry, persistent=False)

    def forward(self, grid: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
        if tuple(grid.shape[-3:]) != (self.height, self.width, 3):
            raise ValueError(f"grid must have shape [B, {self.height}, {self.width}, 3], got {tuple(grid.shape)}")
        g = grid.long()  # uint8 indices cannot index an Embedding
        if self.view is not None:
            g = self.view(g)
        c = carry.long()
        if self.channels == 0:
            # One-hot by scatter into one flat vector: position p's feature f sits at p*CELL + f.
            batch, cells = g.shape[0], g.shape[1] * g.shape[2]
            ids = (g.reshape(batch, cells, 3) + self.feature_offsets).reshape(batch, cells * 3)
            ids = ids + self.position_offsets
            carried = c + self.carry_offsets
            x = torch.zeros(batch, self.out.in_features, device=g.device).scatter(1, torch.cat([ids, carried], 1), 1.0)
            return self.out(x)
        cells = self.type_embed(g[..., 0]) + self.colour_embed(g[..., 1]) + self.state_embed(g[..., 2])
        x = self.conv(cells.permute(0, 3, 1, 2))  # [B, E, H, W] for Conv2d
        carried = self.type_embed(c[..., 0]) + self.colour_embed(c[..., 1])
        return self.out(torch.cat([x.flatten(start_dim=1), carried], dim=-1))


class MissionEncoder(nn.Module):
    """Clause-slot mission embeddings ``[B, S, E]`` -> ``[B, out_dim]``.

    A Linear shared across slots projects each clause to ``slot_dim`` (followed by a ReLU, so
    the two Linears do not collapse into one); the slots are then flattened *in order* (clause i is sub-task i, so the order carries meaning) and mixed by a
    Linear. Empty (all-zero) slots map to the projection bias, which the network can learn to
    recognise as "no clause".
    """

    def __init__(self, embed_dim: int = 384, slots: int = 6, slot_dim: int = 32, out_dim: int = 128) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.slots = slots
        self.slot_proj = nn.Linear(embed_dim, slot_dim)
        self.out = nn.Linear(slots * slot_dim, out_dim)

    def forward(self, mission: torch.Tensor) -> torch.Tensor:
        if tuple(mission.shape[-2:]) != (self.slots, self.embed_dim):
            raise ValueError(f"mission must have shape [B, {self.slots}, {self.embed_dim}], got {tuple(mission.shape)}")
        per_slot = torch.relu(self.slot_proj(mission))  # [B, S, slot_dim]
        return self.out(per_slot.flatten(start_dim=-2))


@dataclass(frozen=True)
class EncoderSpec:
    """Sizes of a :class:`StateEncoder`; one spec is shared by all heads of a learner."""

    height: int = 11  # grid rows
    width: int = 11  # grid columns
    mission_slots: int = 6  # clause slots S in the mission tensor
    mission_embed_dim: int = 384  # sentence-embedding size E of each clause
    cell_embed_dim: int = 16  # per-cell embedding size (type+colour+state tables)
    conv_channels: int = 32  # channels of both 3x3 convolutions
    obs_dim: int = 128  # output of ObservationEncoder
    slot_dim: int = 32  # per-clause projection size in MissionEncoder
    mission_dim: int = 128  # output of MissionEncoder
    out_dim: int = 256  # output of StateEncoder (input of the head MLP)
    egocentric: bool = False  # re-express the grid around the agent before encoding it
    kind: str = "grid"  # "grid": ObservationEncoder + MissionEncoder; "entities": EntityStateEncoder
    entity_dim: int = 64  # entities: token width
    max_entities: int = 16  # entities: doors/objects encoded (the suite has 4 doors + up to 12 objects)
    patch: int = 2  # entities: cells on each side of the agent in the local egocentric patch
    grounding: str = "attention"  # entities: how a clause finds the entities it names (GROUNDINGS)
    clause_tracking: bool = False  # entities + lexical: which clause is current, read from the state (ClauseTracker)


#: The lexical role weights enter the attention logits multiplied by this gain. Adam moves a
#: parameter by about ``lr`` per update, so without it 2,500 updates at lr 1e-3 could sharpen the
#: attention to logits of only ~2.5. Measured on the validation split (reports/tuning/imit_k1_expert3000_lexical*.json):
#: drop accuracy 0.45 (gain 1) -> 0.88 (gain 10) on the expert's training actions.
LEXICAL_GAIN = 10.0


def clause_lexicon() -> torch.Tensor:
    """float ``[vocabulary, NUM_OBJECT_TYPES + NUM_COLOURS]``: which object-type or colour attribute
    of MiniGrid's symbolic encoding each clause word names ("red" -> colour red, "ball" -> type
    ball; "put", "the", ... name none). MiniGrid names its attributes with the same English words."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    from rgvlm.rl.missions import CLAUSE_VOCABULARY

    lexicon = torch.zeros(len(CLAUSE_VOCABULARY), NUM_OBJECT_TYPES + NUM_COLOURS)
    for i, word in enumerate(CLAUSE_VOCABULARY):
        if word in OBJECT_TO_IDX:
            lexicon[i, OBJECT_TO_IDX[word]] = 1.0
        if word in COLOR_TO_IDX:
            lexicon[i, NUM_OBJECT_TYPES + COLOR_TO_IDX[word]] = 1.0
    return lexicon


def state_encoder(spec: EncoderSpec) -> nn.Module:
    """The state encoder ``spec.kind`` names (see :data:`STATE_ENCODERS`).

    Every state encoder is called as ``(grid, carry, mission)``, and also as
    ``(encoder.featurize(grid, carry), None, mission)``: ``featurize`` is the parameter-free
    part (finding the agent, the objects, one-hot codes), so a trainer that runs several
    networks on the same batch computes it once per batch instead of once per network.
    """
    if spec.kind == "entities":
        return EntityStateEncoder(spec)
    if spec.kind == "grid":
        return StateEncoder(spec)
    raise ValueError(f"encoder kind {spec.kind!r}: expected one of {', '.join(STATE_ENCODERS)}")


class StateEncoder(nn.Module):
    """(grid, carry, mission) -> ``[B, spec.out_dim]``: concat of both encoders -> ReLU -> Linear -> ReLU."""

    def __init__(self, spec: EncoderSpec | None = None) -> None:
        super().__init__()
        spec = spec if spec is not None else EncoderSpec()
        self.obs = ObservationEncoder(
            spec.height, spec.width, spec.cell_embed_dim, spec.conv_channels, spec.obs_dim, spec.egocentric
        )
        self.mission = MissionEncoder(spec.mission_embed_dim, spec.mission_slots, spec.slot_dim, spec.mission_dim)
        self.out = nn.Linear(spec.obs_dim + spec.mission_dim, spec.out_dim)

    def featurize(self, grid: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
        """The observation as one float row per state (see :func:`state_encoder`); here the raw
        grid and carry values, which :meth:`forward` reads back."""
        return torch.cat([grid.flatten(start_dim=1), carry], dim=1).to(torch.float32)

    def forward(self, grid: torch.Tensor, carry: torch.Tensor | None, mission: torch.Tensor) -> torch.Tensor:
        if carry is None:  # featurized: [B, H*W*3 + 2]
            cells = self.obs.height * self.obs.width * 3
            grid, carry = grid[:, :cells].reshape(-1, self.obs.height, self.obs.width, 3).long(), grid[:, cells:].long()
        joint = torch.cat([self.obs(grid, carry), self.mission(mission)], dim=-1)
        return torch.relu(self.out(torch.relu(joint)))


def one_hot(index: torch.Tensor, classes: int) -> torch.Tensor:
    """float one-hot codes; unlike ``F.one_hot`` it has no data-dependent check, so it vmaps."""
    return (index.unsqueeze(-1) == torch.arange(classes, device=index.device)).to(torch.float32)


# Object types the entity encoder attends to (minigrid OBJECT_TO_IDX: door, key, ball, box).
ENTITY_TYPES = (4, 5, 6, 7)
#: Entities a sub-task names: the object to move (or the door to open), and the object to put it next to.
ROLES = 2


class EntityStateEncoder(nn.Module):
    """Object-centric, mission-conditioned state encoder: (grid, carry, mission) -> ``[B, out_dim]``.

    What a policy in this suite needs is *where the objects the mission names are, relative
    to me*, and what is right around me. So, rather than flattening the whole grid:

    * every door, key, ball and box (up to ``max_entities``) becomes one token: the sum of its
      type, colour and state embeddings (the BabyAI-1.1 per-attribute "bag of words") and of
      its position in the agent's frame (cells ahead, cells to the right);
    * each token is modulated by the mission (FiLM: a per-channel scale and shift computed
      from the mission features), so the same red key is encoded differently when the
      mission names it; the tokens are then max- and mean-pooled (order-free, any count);
    * a local patch (``patch`` cells on each side of the agent, egocentric) gives walls,
      doorways and what is directly ahead; the agent's absolute cell gives which room it is
      in; the carried object is embedded with the same type/colour tables.

    All of it is fixed-shape gathers and small Linears (vmap-friendly, no Python state), and
    it is several times cheaper on a CPU than the one-hot grid encoder.

    Grounding (``spec.grounding``): with ``attention`` each (clause, role) query is a Linear of the
    clause embedding, matched against learned keys of the tokens. With ``lexical`` the mission must
    be clause word codes (:class:`rgvlm.rl.missions.ClauseTokenEmbedder`): word p of a clause names
    an entity when it is the name of the entity's type or colour (:func:`clause_lexicon`), and
    role r's logit for entity n is ``LEXICAL_GAIN * sum_p w[r, p] * names[p, n]``, where the
    ``ROLES x words`` weights ``w`` (zero at the start) are all that is learned. Why: on the
    validation split the learned attention never found the object a put-next clause names (0.01-0.09
    of put-next sub-tasks completed, also after 12 epochs of 3,000 expert episodes), while the
    lexical one learned it in 3 epochs (0.57-0.61; exact grounding read from the words: 0.59).
    """

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.height, self.width = spec.height, spec.width
        self.max_entities = spec.max_entities
        d = spec.entity_dim
        self.reach = max(spec.height, spec.width)  # relative offsets lie in [-(reach-1), reach-1]
        # Every "embedding" is a Linear on one-hot codes: the same function as summed embedding
        # tables, without embedding_dense_backward, which dominated the CPU update time.
        cell = NUM_OBJECT_TYPES + NUM_COLOURS + NUM_STATES
        self.token_embed = nn.Linear(cell + 2 * (2 * self.reach - 1), d)
        self.mission = MissionEncoder(spec.mission_embed_dim, spec.mission_slots, spec.slot_dim, spec.mission_dim)
        self.film = nn.Linear(spec.mission_dim, 2 * d)
        # Goal grounding: each clause asks, for each of its two roles (the object to move or the
        # door to open; the object to put it next to), which entity it names, and reads that
        # entity's code (type, colour, state, position relative to the agent) by attention.
        if spec.grounding not in GROUNDINGS:
            raise ValueError(f"grounding {spec.grounding!r}: expected one of {', '.join(GROUNDINGS)}")
        self.lexical = spec.grounding == "lexical"
        if self.lexical:
            from rgvlm.rl.missions import CLAUSE_VOCABULARY, MAX_CLAUSE_WORDS

            if spec.mission_embed_dim != MAX_CLAUSE_WORDS * len(CLAUSE_VOCABULARY):
                raise ValueError(f"lexical grounding reads clause word codes ({MAX_CLAUSE_WORDS * len(CLAUSE_VOCABULARY)} "
                                 f"values per clause), got mission_embed_dim {spec.mission_embed_dim}")
            self.register_buffer("lexicon", clause_lexicon(), persistent=False)
            self.role_weights = nn.Parameter(torch.zeros(ROLES, MAX_CLAUSE_WORDS))
        else:
            self.query = nn.Linear(spec.slot_dim, ROLES * d)  # from each clause's projection (MissionEncoder)
            self.key = nn.Linear(d, d)
        if spec.clause_tracking and not self.lexical:
            raise ValueError("clause_tracking reads the clauses' grounded entities: it needs grounding 'lexical', "
                             f"got {spec.grounding!r}")
        self.tracker = ClauseTracker(self.reach) if spec.clause_tracking else None
        tracked = ClauseTracker.out_dim(spec.mission_slots, d) if spec.clause_tracking else 0
        self.token_in = nn.Linear(d, d)
        self.token_out = nn.Linear(d, d)
        # Local egocentric patch around the agent, read from the (2H-1) x (2W-1) egocentric view.
        self.patch = spec.patch
        self.view = EgocentricView(spec.height, spec.width)
        side = 2 * spec.patch + 1
        self.patch_embed = nn.Linear(side * side * cell, d)
        self.here_embed = nn.Linear(spec.height + spec.width + 4 + NUM_OBJECT_TYPES + NUM_COLOURS, d)
        self.out = nn.Linear(4 * d + spec.mission_slots * ROLES * d + spec.mission_dim + tracked, spec.out_dim)
        self.register_buffer("entity_types", torch.tensor(ENTITY_TYPES), persistent=False)
        self.register_buffer("directions", torch.tensor(DIRECTIONS), persistent=False)  # [4, (x, y)]
        # Ties broken towards the top-left cell, so the selection is deterministic.
        self.register_buffer("raster", torch.arange(spec.height * spec.width), persistent=False)

    @staticmethod
    def _one_hot_cells(cells: torch.Tensor) -> torch.Tensor:
        """long ``[..., 3]`` (type, colour, state) -> float ``[..., 21]``."""
        return torch.cat([one_hot(cells[..., 0], NUM_OBJECT_TYPES), one_hot(cells[..., 1], NUM_COLOURS),
                          one_hot(cells[..., 2], NUM_STATES)], dim=-1)

    def featurize(self, grid: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
        """The parameter-free part: float ``[B, F]`` = entity codes and mask, the local patch's
        one-hot cells, and the agent's cell, heading and carried object."""
        if tuple(grid.shape[-3:]) != (self.height, self.width, 3):
            raise ValueError(f"grid must have shape [B, {self.height}, {self.width}, 3], got {tuple(grid.shape)}")
        g = grid.long()
        batch, n_cells = g.shape[0], self.height * self.width
        cells = g.reshape(batch, n_cells, 3)
        types = cells[..., 0]
        agent = (types == AGENT_TYPE).to(torch.int64).argmax(dim=1)  # [B]
        direction = cells.gather(1, agent.view(batch, 1, 1).expand(batch, 1, 3))[:, 0, 2]  # [B]
        agent_y, agent_x = agent // self.width, agent % self.width

        # Entity tokens: the first max_entities doors/objects in raster order, masked if fewer.
        is_entity = (types.unsqueeze(-1) == self.entity_types).any(-1)  # [B, HW]
        score = is_entity.to(torch.int64) * n_cells - self.raster
        index = score.topk(self.max_entities, dim=1).indices  # [B, N]
        mask = is_entity.gather(1, index).to(torch.float32)  # [B, N]
        ent = cells.gather(1, index.unsqueeze(-1).expand(-1, -1, 3))
        dy, dx = index // self.width - agent_y[:, None], index % self.width - agent_x[:, None]
        fwd = self.directions[direction]  # [B, 2]: (x, y) of "ahead"
        rgt = self.directions[(direction + 1) % 4]
        ahead = dx * fwd[:, :1] + dy * fwd[:, 1:] + self.reach - 1
        right = dx * rgt[:, :1] + dy * rgt[:, 1:] + self.reach - 1
        codes = torch.cat([self._one_hot_cells(ent), one_hot(ahead, 2 * self.reach - 1),
                           one_hot(right, 2 * self.reach - 1)], dim=-1)  # [B, N, token codes]

        # Local patch (walls, doorways, what is ahead), the agent's cell and heading, the carried object.
        view = self.view(g)  # [B, 2H-1, 2W-1, 3], agent at (H-1, W-1) facing up
        r0, c0, p = self.height - 1, self.width - 1, self.patch
        patch = self._one_hot_cells(view[:, r0 - p : r0 + p + 1, c0 - p : c0 + p + 1]).flatten(start_dim=1)
        c = carry.long()
        here = torch.cat([one_hot(agent_y, self.height), one_hot(agent_x, self.width), one_hot(direction, 4),
                          one_hot(c[:, 0], NUM_OBJECT_TYPES), one_hot(c[:, 1], NUM_COLOURS)], dim=-1)
        return torch.cat([codes.flatten(start_dim=1), mask, patch, here], dim=1)

    def forward(self, grid: torch.Tensor, carry: torch.Tensor | None, mission: torch.Tensor) -> torch.Tensor:
        features = grid if carry is None else self.featurize(grid, carry)
        n, width = self.max_entities, self.token_embed.in_features
        sizes = [n * width, n, self.patch_embed.in_features, self.here_embed.in_features]
        if features.shape[-1] != sum(sizes):
            raise ValueError(f"featurized states must have {sum(sizes)} columns, got {features.shape[-1]}")
        codes, mask, patch, here = features.split(sizes, dim=1)
        mask = mask.unsqueeze(-1)  # [B, N, 1]
        clauses = torch.relu(self.mission.slot_proj(mission))  # [B, S, slot_dim], as in MissionEncoder
        m = self.mission.out(clauses.flatten(start_dim=-2))  # [B, mission_dim]
        scale, shift = self.film(m).unsqueeze(1).chunk(2, dim=-1)
        tokens = self.token_embed(codes.reshape(-1, n, width))  # [B, N, d]
        present = mission.abs().sum(-1) > 0  # [B, S]: clause slots in use
        if self.lexical:
            grounded, attention = self._ground_lexical(mission, codes.reshape(-1, n, width), present, tokens, mask)
        else:
            grounded, attention = self._ground(clauses, present, tokens, mask)
        h = torch.relu(self.token_in(tokens))
        h = torch.relu(self.token_out(torch.relu(h * (1.0 + scale) + shift)))  # [B, N, d], >= 0
        pooled_max = (h * mask).amax(dim=1)  # h >= 0, so masked tokens (0) never win over real ones
        pooled_mean = (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        local = torch.relu(self.patch_embed(patch))
        parts = [pooled_max, pooled_mean, local, torch.relu(self.here_embed(here)), grounded, m]
        if self.tracker is not None:
            parts.append(self.tracker(mission, codes.reshape(-1, n, width), attention, grounded, present))
        return torch.relu(self.out(torch.cat(parts, dim=-1)))

    def _ground(self, clauses: torch.Tensor, present: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of every (clause slot, role) query over the entity tokens -> ``[B, S*ROLES*d]``
        (and the attention, see :meth:`_read`)."""
        batch, slots, d = clauses.shape[0], clauses.shape[1], tokens.shape[-1]
        queries = self.query(clauses).reshape(batch, slots * ROLES, d)
        scores = queries @ self.key(tokens).transpose(1, 2) / d**0.5  # [B, S*ROLES, N]
        return self._read(scores, present, tokens, mask)

    def _ground_lexical(self, mission: torch.Tensor, codes: torch.Tensor, present: torch.Tensor,
                        tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Role logits from which clause words name each entity's type or colour -> ``[B, S*ROLES*d]``."""
        batch, slots, positions = mission.shape[0], mission.shape[1], self.role_weights.shape[1]
        words = mission.reshape(batch, slots, positions, -1) @ self.lexicon  # [B, S, P, attributes] each word names
        attributes = codes[..., : self.lexicon.shape[1]]  # [B, N, attributes]: the one-hot type and colour
        names = torch.einsum("bspa,bna->bspn", words, attributes)  # word p names an attribute of entity n
        scores = torch.einsum("rp,bspn->bsrn", LEXICAL_GAIN * self.role_weights, names)
        return self._read(scores.reshape(batch, slots * ROLES, -1), present, tokens, mask)

    @staticmethod
    def _read(scores: torch.Tensor, present: torch.Tensor, tokens: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over the entities of each (clause slot, role) row of ``scores`` ``[B, S*ROLES, N]``,
        read from the tokens; clause slots that are not ``present`` (all-zero embeddings) read nothing.
        Returns the reads ``[B, S*ROLES*d]`` and the attention ``[B, S*ROLES, N]``."""
        scores = scores + (mask.transpose(1, 2) - 1.0) * 1e4  # absent entities get no weight
        attention = torch.softmax(scores, dim=-1)
        read = attention @ tokens  # [B, S*ROLES, d]
        present = present.to(read.dtype).repeat_interleave(ROLES, dim=1).unsqueeze(-1)
        return (read * present).flatten(start_dim=1), attention


class ClauseTracker(nn.Module):
    """Which clause of an ordered mission is current, read from the current state alone.

    The suite's sub-tasks leave their effect in the grid (rgvlm.envs.suite): a door stays open, a
    placed object stays next to its target, and sub-task i is done once 0..i-1 are and its effect
    holds. So the clause to work on is, to a good approximation, the first one whose effect does
    not hold in what the learner sees. Without this the encoder gets every clause's grounded
    entities side by side and must learn adjacency tests and an ordered "first not yet done"
    from them; on the validation split the policies then stopped after about one sub-task at
    every k (reports/tuning/chaining_diagnosis_before.json).

    Parameter-free, and soft so that it works with the learned grounding: for each clause, the
    grounding's attention over the entities (role 0: the door to open or the object to move;
    role 1: the object to put it next to) gives the chance its effect holds:
    ``open``: the attended entity is an open door; ``put``: the two attended entities are in
    4-adjacent cells (BabyAI's ``pos_next_to``), computed from their positions in the agent's
    frame. ``current_i = prod_{j<i} holds_j * (1 - holds_i)``. Out: the current clause's grounded
    reads (both roles), ``current`` and ``holds`` per clause slot, and whether the current clause
    is a door. It reads the mission's word codes (the first word says open or put) and the
    state, never the level's privileged progress.
    """

    def __init__(self, reach: int) -> None:
        super().__init__()
        from rgvlm.rl.missions import CLAUSE_VOCABULARY

        self.reach = reach
        self.open_word = CLAUSE_VOCABULARY.index("open")
        self.vocabulary = len(CLAUSE_VOCABULARY)
        self.register_buffer("offsets", torch.arange(2 * reach - 1, dtype=torch.float32), persistent=False)

    @staticmethod
    def out_dim(slots: int, entity_dim: int) -> int:
        return ROLES * entity_dim + 2 * slots + 1

    def forward(self, mission: torch.Tensor, codes: torch.Tensor, attention: torch.Tensor, grounded: torch.Tensor,
                present: torch.Tensor) -> torch.Tensor:
        batch, slots = mission.shape[0], mission.shape[1]
        attributes = NUM_OBJECT_TYPES + NUM_COLOURS
        is_open_door = codes[..., DOOR_TYPE] * codes[..., attributes + OPEN_STATE]  # [B, N]
        sides = 2 * self.reach - 1
        ahead = codes[..., attributes + NUM_STATES : attributes + NUM_STATES + sides] @ self.offsets  # [B, N]
        right = codes[..., attributes + NUM_STATES + sides : attributes + NUM_STATES + 2 * sides] @ self.offsets
        distance = (ahead.unsqueeze(2) - ahead.unsqueeze(1)).abs() + (right.unsqueeze(2) - right.unsqueeze(1)).abs()
        adjacent = (distance == 1.0).to(codes.dtype)  # [B, N, N]; masked entities get ~0 attention
        roles = attention.reshape(batch, slots, ROLES, -1)
        holds_open = roles[:, :, 0] @ is_open_door.unsqueeze(-1)  # [B, S, 1]
        holds_put = torch.einsum("bsn,bnm,bsm->bs", roles[:, :, 0], adjacent, roles[:, :, 1]).unsqueeze(-1)
        door_clause = mission.reshape(batch, slots, -1, self.vocabulary)[:, :, 0, self.open_word].unsqueeze(-1)
        used = present.to(codes.dtype).unsqueeze(-1)
        holds = (door_clause * holds_open + (1.0 - door_clause) * holds_put) * used + (1.0 - used)  # absent: done
        before = torch.cat([torch.ones_like(holds[:, :1]), torch.cumprod(holds, dim=1)[:, :-1]], dim=1)
        current = before * (1.0 - holds) * used  # [B, S, 1]
        focus = (current * grounded.reshape(batch, slots, -1)).sum(1)  # [B, ROLES*d]
        return torch.cat([focus, current.squeeze(-1), holds.squeeze(-1), (current * door_clause).sum(1)], dim=-1)

class EncodedState(nn.Module):
    """The encoder of a head that reads another network's state features (``shared=True``).

    Called like a state encoder, as ``(features [B, out_dim], None, mission)``; returns the
    features. It has no parameters, so such a head is its MLP alone.
    """

    def forward(self, features: torch.Tensor, carry: torch.Tensor | None, mission: torch.Tensor) -> torch.Tensor:
        if carry is not None:
            raise ValueError("a head with shared=True reads encoded states (features, None, mission), "
                             "not (grid, carry, mission)")
        return features


class QNetwork(nn.Module):
    """One Q function: state -> ``[B, num_actions]``. ``shared``: no encoder (:class:`EncodedState`)."""

    def __init__(
        self,
        num_actions: int = 6,
        hidden_dim: int = 256,
        num_layers: int = 2,
        spec: EncoderSpec | None = None,
        shared: bool = False,
    ) -> None:
        super().__init__()
        spec = spec if spec is not None else EncoderSpec()
        self.encoder = EncodedState() if shared else state_encoder(spec)
        self.head = mlp(spec.out_dim, hidden_dim, num_layers, num_actions)

    def forward(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(grid, carry, mission))


class DiscreteCritic(nn.Module):
    """Twin Q functions with independent encoders (or none, ``shared``).

    ``forward`` returns a single tensor of shape ``[B, 2, num_actions]``: index 0 along dim 1 is
    Q1, index 1 is Q2. A single output (rather than a tuple) keeps ``vmap``/``functional_call``
    simple for callers that stack many runs.
    """

    def __init__(
        self,
        num_actions: int = 6,
        hidden_dim: int = 256,
        num_layers: int = 2,
        spec: EncoderSpec | None = None,
        shared: bool = False,
    ) -> None:
        super().__init__()
        self.q1 = QNetwork(num_actions, hidden_dim, num_layers, spec, shared)
        self.q2 = QNetwork(num_actions, hidden_dim, num_layers, spec, shared)

    def forward(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.q1(grid, carry, mission), self.q2(grid, carry, mission)], dim=1)


class ValueNetwork(nn.Module):
    """State value V(s): state -> ``[B]``."""

    def __init__(self, hidden_dim: int = 256, num_layers: int = 2, spec: EncoderSpec | None = None,
                 shared: bool = False) -> None:
        super().__init__()
        spec = spec if spec is not None else EncoderSpec()
        self.encoder = EncodedState() if shared else state_encoder(spec)
        self.head = mlp(spec.out_dim, hidden_dim, num_layers, 1)

    def forward(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(grid, carry, mission)).squeeze(-1)


class DiscretePolicy(QNetwork):
    """Categorical policy: state -> unnormalised action logits ``[B, num_actions]``.

    The same architecture as one Q function (its own encoder and head); only the meaning of
    the outputs differs.
    """
