"""The observation encoders: the egocentric view and the one-hot encoder, hand-checked."""

from __future__ import annotations

import torch
from minigrid.core.constants import OBJECT_TO_IDX

from rgvlm.envs import encode_observation, env_id_for, make_env, reset_quietly
from rgvlm.rl.networks import NUM_COLOURS, NUM_OBJECT_TYPES, NUM_STATES, EgocentricView, ObservationEncoder


def test_egocentric_view_puts_the_agent_at_the_centre_facing_up():
    env = make_env(env_id_for(2))
    view = EgocentricView(11, 11)
    for seed in range(5):
        reset_quietly(env, seed)
        for action in (0, 2, 1, 2, 2):  # turn and walk so every heading is seen
            grid, _ = encode_observation(env)
            ego = view(torch.as_tensor(grid)[None].long())[0]
            u = env.unwrapped
            assert ego.shape == (21, 21, 3)
            assert ego[10, 10, 0] == OBJECT_TO_IDX["agent"]
            # The cell in front of the agent is the one right above the centre.
            fx, fy = u.front_pos
            assert torch.equal(ego[9, 10], torch.as_tensor(grid[fy, fx]).long())
            # Outside the grid reads as wall.
            assert ego[0, 0, 0] == OBJECT_TO_IDX["wall"] or ego[20, 20, 0] == OBJECT_TO_IDX["wall"]
            env.step(action)


def test_one_hot_encoder_equals_a_linear_map_on_explicit_one_hots():
    torch.manual_seed(0)
    encoder = ObservationEncoder(height=3, width=2, channels=0, out_dim=5)
    grid = torch.tensor([[[[2, 5, 0], [10, 0, 3]], [[1, 0, 0], [6, 4, 1]], [[4, 2, 1], [5, 1, 0]]]], dtype=torch.uint8)
    carry = torch.tensor([[6, 3]], dtype=torch.uint8)
    cell = NUM_OBJECT_TYPES + NUM_COLOURS + NUM_STATES
    x = torch.zeros(1, 6 * cell + NUM_OBJECT_TYPES + NUM_COLOURS)
    for position, (t, c, s) in enumerate(grid.reshape(6, 3).tolist()):
        x[0, position * cell + t] = 1
        x[0, position * cell + NUM_OBJECT_TYPES + c] = 1
        x[0, position * cell + NUM_OBJECT_TYPES + NUM_COLOURS + s] = 1
    x[0, 6 * cell + 6] = 1
    x[0, 6 * cell + NUM_OBJECT_TYPES + 3] = 1
    torch.testing.assert_close(encoder(grid, carry), encoder.out(x))
