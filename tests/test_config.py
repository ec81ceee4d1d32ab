"""The one config mechanism (rgvlm.config): every section is checked the same way, IQL's
hyperparameters once on their way to the trainer, and the config layer imports nothing above it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from rgvlm import paths
from rgvlm.config import Config, ParamError
from rgvlm.params import IQLConfig, dataset_config, labelling_config, load_params, train_config
from rgvlm.rewards.erl_vlm import ERLVLMConfig
from rgvlm.rewards.erl_vlm import config_from_params as erl_vlm_config
from rgvlm.rewards.rl_vlm_f import RLVLMFConfig
from rgvlm.rewards.segments import SegmentMethodConfig
from rgvlm.rewards.vlm_car import config_from_params as vlm_car_config

DATASET = {"seed": 0, "ks": [1, 2], "episodes_per_k": 3, "mixture": {"expert": 1.0}, "noise_epsilon": 0.1,
           "wander_steps": [1, 2]}
TRAIN = {"reward_sets": ["sparse"], "seeds": [0]}


def drop(raw: dict, key: str) -> dict:
    return {k: v for k, v in raw.items() if k != key}


# (what is wrong, section builder, raw section, dotted key, words of what is allowed)
FAULTS = [
    ("unknown key", dataset_config, {**DATASET, "epsiodes_per_k": 3}, "dataset.epsiodes_per_k", "episodes_per_k"),
    ("missing key", dataset_config, drop(DATASET, "seed"), "dataset.seed", "the key is missing"),
    ("wrong type", dataset_config, {**DATASET, "seed": "zero"}, "dataset.seed", "an integer in 0..999"),
    ("out of bounds", dataset_config, {**DATASET, "noise_epsilon": 1.5}, "dataset.noise_epsilon", "[0.0, 1.0]"),
    ("bad choice", dataset_config, {**DATASET, "expert_view": "omniscient"}, "dataset.expert_view", "agent, state"),
    ("unknown key", train_config, {**TRAIN, "taus": 0.9}, "train.taus", "tau"),
    ("missing key", train_config, drop(TRAIN, "seeds"), "train.seeds", "the key is missing"),
    ("wrong type", train_config, {**TRAIN, "lr": "fast"}, "train.lr", "a number > 0"),
    ("out of bounds", train_config, {**TRAIN, "gamma": 1.0}, "train.gamma", "[0.0, 1.0)"),
    ("bad choice", train_config, {**TRAIN, "encoder": "transformer"}, "train.encoder", "grid, entities"),
    ("unknown key", erl_vlm_config, {"num_clases": 3}, "erl_vlm.num_clases", "num_classes"),
    ("wrong type", erl_vlm_config, {"stratified": "yes"}, "erl_vlm.stratified", "true or false"),
    ("out of bounds", erl_vlm_config, {"segment_length": 0}, "erl_vlm.segment_length", "an integer in 1.."),
    ("bad choice", erl_vlm_config, {"loss": "mse"}, "erl_vlm.loss", "mae, ce"),
    ("nested key", vlm_car_config, {"sandbox": {"memory_mb": 1}}, "vlm_car.sandbox.memory_mb", "an integer in 64.."),
    ("list item", dataset_config, {**DATASET, "ks": [1, 9]}, "dataset.ks[1]", "1..6"),
    ("mapping key", dataset_config, {**DATASET, "mixture": {"bogus": 1.0}}, "dataset.mixture.bogus", "expert, noisy"),
]


@pytest.mark.parametrize(("fault", "build", "raw", "key", "allowed"), FAULTS,
                         ids=[f"{f[3]}-{f[0]}" for f in FAULTS])
def test_every_fault_names_the_dotted_key_the_value_and_what_is_allowed(fault, build, raw, key, allowed):
    with pytest.raises(ParamError) as error:
        build(raw)
    assert error.value.key == key, fault
    assert allowed in error.value.expected, (fault, error.value.expected)
    assert str(error.value).startswith(f"params: {key}=") and "is invalid: expected" in str(error.value)


def test_a_params_file_with_the_old_labeling_section_names_the_new_one(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("env: {}\nlabeling:\n  backend: scripted\n")
    with pytest.raises(ParamError, match="now spelt `labelling`") as error:
        load_params(path)
    assert error.value.key == "labeling" and str(path) in str(error.value)


def test_a_config_built_in_python_is_checked_by_the_same_rules():
    with pytest.raises(ParamError, match=r"train\.tau=1\.0 is invalid: expected a number in \(0\.0, 1\.0\)"):
        IQLConfig(tau=1.0)
    with pytest.raises(ParamError, match=r"erl_vlm\.num_classes=7 .*one of 2, 3, 4, 5"):
        ERLVLMConfig(num_classes=7)
    with pytest.raises(ParamError, match=r"rl_vlm_f\.batch_size=0"):  # a shared field, named by the subclass
        RLVLMFConfig(batch_size=0)
    assert isinstance(ParamError("k", 1, "x"), ValueError)  # what callers that predate ParamError catch


def test_values_are_kept_as_the_sections_saved_them_before():
    # IQL's fields go into checkpoints and fingerprints as given: an int stays an int there ...
    config = train_config({**TRAIN, "checkpoint_interval_s": 600})
    assert type(config.iql.checkpoint_interval_s) is int
    # ... while the params sections always held floats for their number fields.
    assert type(labelling_config({"timeout_s": 60}).timeout_s) is float
    assert vlm_car_config({"sandbox": {"timeout_s": 30}}).sandbox.timeout_s == 30.0
    # Lists become tuples; a mixture lists every kind; one episodes_per_k is every split's.
    dataset = dataset_config(DATASET)
    assert dataset.ks == (1, 2) and dataset.wander_steps == (1, 2)
    assert dataset.mixture == {"expert": 1.0, "noisy": 0.0, "partial": 0.0, "decoy": 0.0}


def test_the_two_segment_methods_share_their_fields():
    shared = set(SegmentMethodConfig.__dataclass_fields__)
    assert len(shared) >= 17
    assert shared <= set(ERLVLMConfig.__dataclass_fields__) and shared == set(RLVLMFConfig.__dataclass_fields__)
    assert (RLVLMFConfig().ensemble_size, ERLVLMConfig().ensemble_size) == (3, 1)


def test_iql_config_is_built_and_checked_once_on_its_way_to_the_trainer(tiny_dataset, tmp_path, monkeypatch):
    from rgvlm.rl.runs import iql_config_for, train_runs

    built = []
    check_fields = IQLConfig.__post_init__

    def counting(self):
        built.append(self)
        check_fields(self)

    monkeypatch.setattr(IQLConfig, "__post_init__", counting)
    raw = {**TRAIN, "num_steps": 2, "batch_size": 8, "hidden_dim": 8, "num_layers": 1, "conv_channels": 0,
           "egocentric": True, "obs_feature_dim": 8, "mission_feature_dim": 8, "state_feature_dim": 8, "slot_dim": 4,
           "log_every": 1, "checkpoint_every": 2}
    config = train_config(raw)
    iql = iql_config_for(tiny_dataset, config.iql)
    assert (iql.grid_height, iql.grid_width) == tiny_dataset.obs_grid.shape[1:3]
    table = torch.zeros(len(tiny_dataset.missions), 6, 384)
    rewards = {"sparse": np.zeros(tiny_dataset.num_transitions, dtype=np.float32)}
    train_runs(tiny_dataset, table, rewards, config.seeds, iql, "cpu", tmp_path)
    assert len(built) == 1
    # Setting the grid still checks the rules that involve it.
    with pytest.raises(ParamError, match=r"train\.patch"):
        iql_config_for(tiny_dataset, IQLConfig(patch=min(tiny_dataset.obs_grid.shape[1:3])))


# -- layering -----------------------------------------------------------------------------
CONFIG_LAYER = ("rgvlm/config.py", "rgvlm/params.py")


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in a file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_the_config_layer_imports_nothing_from_rl():
    for name in CONFIG_LAYER:
        for module, _ in imports(paths.ROOT / name):
            assert not (module == "rgvlm.rl" or module.startswith("rgvlm.rl.")), (name, module)
    assert Config.__module__ == "rgvlm.config"


def test_no_module_imports_a_private_name_of_the_params_module():
    files = [p for top in ("rgvlm", "tests", "benchmarks", "experiments", "notebooks")
             for p in (paths.ROOT / top).rglob("*.py")]
    assert len(files) > 50
    for path in files:
        for module, names in imports(path):
            private = [n for n in names if n.startswith("_")]
            assert not (module in ("rgvlm.params", "rgvlm.config") and private), (path, private)
