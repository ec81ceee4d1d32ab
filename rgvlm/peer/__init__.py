"""Peer baselines written by others, run on the project's data and scored by its own rollouts.

:mod:`rgvlm.peer.d3rlpy_baseline`: d3rlpy's DiscreteBC and DiscreteCQL. d3rlpy is an optional
dependency, imported lazily: ``import rgvlm.peer`` never needs it.
"""

from rgvlm.peer.d3rlpy_baseline import (
    D3RLPY_VERSION,
    INSTALL_COMMANDS,
    Conversion,
    D3rlpyPolicies,
    TrainedRun,
    install_command,
    require_d3rlpy,
    to_mdp_dataset,
    train_d3rlpy,
)

__all__ = ["D3RLPY_VERSION", "INSTALL_COMMANDS", "Conversion", "D3rlpyPolicies", "TrainedRun", "install_command",
           "require_d3rlpy", "to_mdp_dataset", "train_d3rlpy"]
