"""The one config mechanism (rgvlm.config): every section is checked the same way, IQL's
hyperparameters once on their way to the trainer, and the config layer imports nothing above it;
profiles as overlays of params.yaml and `dvc exp run -S` overrides (the loader in rgvlm.params); the one
registry of section checkers that every entry point comes through (rgvlm.sections)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rgvlm import paths
from rgvlm.config import Config, ParamError
from rgvlm.methods.erl_vlm import ERLVLMConfig
from rgvlm.methods.erl_vlm import config_from_params as erl_vlm_config
from rgvlm.methods.rl_vlm_f import RLVLMFConfig
from rgvlm.methods.vlm_car import config_from_params as vlm_car_config
from rgvlm.params import (
    EXTENDS,
    WRITTEN,
    IQLConfig,
    apply_overrides,
    dataset_config,
    labelling_config,
    load_params,
    load_profile,
    merge,
    parse_override,
    train_config,
)
from rgvlm.profiles import main as profiles_main
from rgvlm.rewards.registry import METHODS
from rgvlm.rewards.segments import SegmentMethodConfig
from rgvlm.sections import check_params, register_section, section_checkers

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
    assert dataset.mixture == {"expert": 1.0, "noisy": 0.0, "partial": 0.0, "decoy": 0.0, "detour": 0.0}


def test_the_two_segment_methods_share_their_fields():
    shared = set(SegmentMethodConfig.__dataclass_fields__)
    assert len(shared) >= 17
    assert shared <= set(ERLVLMConfig.__dataclass_fields__) and shared == set(RLVLMFConfig.__dataclass_fields__)
    assert (RLVLMFConfig().ensemble_size, ERLVLMConfig().ensemble_size) == (3, 1)


def test_iql_config_is_built_and_checked_once_on_its_way_to_the_trainer(tiny_dataset, tmp_path, monkeypatch):
    from rgvlm.rl.runs import train_runs
    from rgvlm.rl.training import iql_config_for

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
    files = [p for top in ("rgvlm", "tests", "benchmarks", "experiments", "tools", "notebooks")
             for p in (paths.ROOT / top).rglob("*.py")]
    assert len(files) > 50
    for path in files:
        for module, names in imports(path):
            private = [n for n in names if n.startswith("_")]
            assert not (module in ("rgvlm.params", "rgvlm.config") and private), (path, private)


# -- profiles as overlays (rgvlm.params: the loader; rgvlm.profiles: writes one out) ------------
FIXTURES = paths.ROOT / "tests" / "fixtures" / "profiles"


@pytest.mark.parametrize("name", ["tiny", "gpu"])
def test_each_overlay_merges_to_the_whole_profile_it_replaced(name):
    """tests/fixtures/profiles/<name>.json is the profile as parsed before profiles became overlays
    (commit e965622): the overlay merged onto params.yaml must be exactly it, whoever reads it."""
    before = json.loads((FIXTURES / f"{name}.json").read_text())
    assert load_profile(name) == before
    assert load_params(paths.ROOT / "profiles" / f"{name}.yaml") == before
    assert load_profile(paths.ROOT / "profiles" / f"{name}.yaml") == before
    from tests.tiny_project import tiny_params

    assert name != "tiny" or tiny_params() == before


def _leaves_equal_to_base(overlay: dict, base: dict, where: str = "") -> list[str]:
    same = []
    for key, value in overlay.items():
        if key == EXTENDS or key.startswith(("+", "~")):
            continue
        if isinstance(value, dict) and isinstance(base[key], dict):
            same += _leaves_equal_to_base(value, base[key], f"{where}{key}.")
        elif value == base[key] and type(value) is type(base[key]):
            same.append(f"{where}{key}")
    return same


@pytest.mark.parametrize("name", ["tiny", "gpu"])
def test_each_overlay_holds_only_what_differs_from_params_yaml(name):
    overlay = yaml.safe_load((paths.ROOT / "profiles" / f"{name}.yaml").read_text())
    assert overlay[EXTENDS] == "../params.yaml"
    assert _leaves_equal_to_base(overlay, yaml.safe_load(paths.PARAMS.read_text())) == []
    # A whole copy would be as long as params.yaml; the overlays are well under half of it.
    assert len((paths.ROOT / "profiles" / f"{name}.yaml").read_text().splitlines()) < 100


BASE = {"train": {"seeds": [0, 1], "beta": 3.0, "net": {"width": 8, "depth": 2}}, "report": {"split": "fresh"}}


def test_merge_mappings_deep_lists_whole_and_the_base_untouched():
    merged = merge(BASE, {"train": {"seeds": [5], "net": {"width": 16}}})
    assert merged == {"train": {"seeds": [5], "beta": 3.0, "net": {"width": 16, "depth": 2}}, "report": {"split": "fresh"}}
    assert BASE["train"]["seeds"] == [0, 1] and BASE["train"]["net"]["width"] == 8
    assert list(merged["train"]) == ["seeds", "beta", "net"]  # the base's order
    # A mapping may replace a scalar and the other way round: only two mappings merge.
    assert merge(BASE, {"train": {"beta": {"a": 1}}})["train"]["beta"] == {"a": 1}
    assert merge(BASE, {"train": {"net": None}})["train"]["net"] is None


@pytest.mark.parametrize(("overlay", "key", "words"), [
    ({"train": {"bta": 1.0}}, "train.bta", "is it misspelt"),
    ({"trian": {"beta": 1.0}}, "trian", "a key of params.yaml"),
    ({"train": {"net": {"widht": 1}}}, "train.net.widht", "+widht"),
    ({"train": {"+beta": 1.0}}, "train.beta", "without the +"),
    ({"train": {"~gamma": None}}, "train.gamma", "has no train.gamma"),
    ({"train": {"~beta": 2.0}}, "train.~beta", "no value"),
], ids=["unknown", "unknown-section", "nested", "add-existing", "remove-missing", "remove-with-value"])
def test_merge_errors_name_the_key(overlay, key, words):
    with pytest.raises(ParamError) as error:
        merge(BASE, overlay)
    assert error.value.key == key and words in error.value.expected


def test_merge_adds_and_removes_keys_with_the_marks_of_dvc_exp_run():
    merged = merge(BASE, {"train": {"+compile": True, "~beta": None, "++seeds": [7], "++new": 1}})
    assert merged["train"] == {"seeds": [7], "net": {"width": 8, "depth": 2}, "compile": True, "new": 1}


def test_overlays_chain_and_fail_clearly_when_misused(tmp_path):
    (tmp_path / "params.yaml").write_text("train: {beta: 3.0, seeds: [0]}\n")
    (tmp_path / "mid.yaml").write_text("extends: params.yaml\ntrain: {beta: 5.0}\n")
    (tmp_path / "top.yaml").write_text("extends: mid.yaml\ntrain: {seeds: [1, 2]}\n")
    assert load_params(tmp_path / "top.yaml") == {"train": {"beta": 5.0, "seeds": [1, 2]}}
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ParamError, match="cycle"):
        load_profile(tmp_path / "loop.yaml")
    # An overlay copied over params.yaml (how whole profiles were used) says what to do instead.
    copied = tmp_path / "elsewhere" / "clone"  # no params.yaml above it
    copied.mkdir(parents=True)
    (copied / "params.yaml").write_text((paths.ROOT / "profiles" / "gpu.yaml").read_text())
    with pytest.raises(ParamError, match=r"is an overlay.*python -m rgvlm.profiles NAME --out params.yaml"):
        load_params(copied / "params.yaml")
    with pytest.raises(ParamError, match="one of gpu, tiny"):
        load_profile("huge")


def test_the_cli_writes_a_profile_merged_and_refuses_an_overlay_onto_a_merged_one(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    assert profiles_main(["tiny", "--out", str(out), "-S", "train.beta=10"]) == 0
    written = load_params(out)
    expected = json.loads((FIXTURES / "tiny.json").read_text())
    expected["train"]["beta"] = 10
    assert written == expected
    assert out.read_text().startswith(WRITTEN)
    (tmp_path / "again.yaml").write_text("extends: params.yaml\ntrain: {beta: 5.0}\n")
    with pytest.raises(ParamError, match="itself a merged profile"):
        load_profile(tmp_path / "again.yaml")
    # A bad value fails through the section checkers, naming the key; nothing is written.
    assert profiles_main(["tiny", "--out", str(tmp_path / "bad.yaml"), "-S", "train.gamma=2"]) == 2
    assert "train.gamma=2" in capsys.readouterr().err and not (tmp_path / "bad.yaml").exists()


# -- overrides in the syntax of `dvc exp run -S` ------------------------------------------------
@pytest.mark.parametrize(("text", "overlay"), [
    ("train.beta=30", {"train": {"beta": 30}}),
    ("dataset.mixture.expert=0.5", {"dataset": {"mixture": {"expert": 0.5}}}),
    ("params.yaml:train.seeds=[0, 1]", {"train": {"seeds": [0, 1]}}),
    ("labelling.model=null", {"labelling": {"model": None}}),
    ("labelling.base_url=http://localhost:8000/v1", {"labelling": {"base_url": "http://localhost:8000/v1"}}),
    ("report.policy='a,b'", {"report": {"policy": "a,b"}}),
    ("+train.compile=true", {"train": {"+compile": True}}),
    ("++train.compile=false", {"train": {"++compile": False}}),
    ("~train.extra_seeds", {"train": {"~extra_seeds": None}}),
])
def test_an_override_reads_as_the_overlay_it_means(text, overlay):
    assert parse_override(text) == overlay


@pytest.mark.parametrize(("text", "words"), [
    ("train.beta", "KEY=VALUE"),
    ("train.beta=3,10", "sweep"),
    ("=3", "dotted key"),
    ("train..beta=3", "dotted key"),
    ("other.yaml:train.beta=3", "params.yaml"),
    ("~train.beta=3", "no value"),
])
def test_a_malformed_override_fails_saying_what_is_expected(text, words):
    with pytest.raises(ParamError, match=words):
        parse_override(text)


def test_overrides_apply_in_order_by_the_overlay_rules():
    params = load_params()
    changed = apply_overrides(params, ["train.beta=30", "dataset.mixture.expert=0.5", "train.beta=31"])
    assert changed["train"]["beta"] == 31 and changed["dataset"]["mixture"]["expert"] == 0.5
    assert changed["dataset"]["mixture"]["noisy"] == params["dataset"]["mixture"]["noisy"]
    assert params == load_params()  # a copy
    with pytest.raises(ParamError) as error:
        apply_overrides(params, ["train.bta=30"])
    assert error.value.key == "train.bta" and "-S train.bta=30" in error.value.expected


# -- one config door (rgvlm.sections) ------------------------------------------------------------
def test_every_section_of_every_profile_has_one_checker():
    checkers = section_checkers()
    for params in (load_params(), load_profile("tiny"), load_profile("gpu")):
        assert list(params) == [name for name in checkers if name in params]  # params.yaml's order
        assert set(params) == set(checkers)
    assert {"report", "peer", "rewards", *METHODS} <= set(checkers)
    for method in METHODS.values():  # a method's section is checked by its own module
        assert checkers[method.section] == f"{method.module}:config_from_params"


@pytest.mark.parametrize("name", ["params.yaml", "tiny", "gpu"])
def test_every_profile_passes_the_one_door(name):
    params = load_params() if name == "params.yaml" else load_profile(name)
    if name == "gpu":  # CUDA graphs need a GPU: check the rest of the section on this machine
        params["train"].update(device="auto", cuda_graphs=False)
    configs = check_params(params)
    assert set(configs) == set(params)
    assert configs["report"].split == params["report"]["split"]


REPORT = {"headline_lambda": 1.0, "split": "fresh", "policy": "sampled"}


@pytest.mark.parametrize(("raw", "key", "words"), [
    ({**REPORT, "headline_lamda": 1.0}, "report.headline_lamda", "headline_lambda"),
    (drop(REPORT, "headline_lambda"), "report.headline_lambda", "the key is missing"),
    ({**REPORT, "headline_lambda": -1}, "report.headline_lambda", "a number >= 0.0"),
    ({**REPORT, "split": "unseen"}, "report.split", "one of seen, fresh"),
    ({**REPORT, "policy": ""}, "report.policy", "the name of an evaluation policy"),
    ([1.0], "report", "a mapping"),
], ids=["unknown", "missing", "negative", "split", "policy", "not-a-mapping"])
def test_the_report_section_is_checked(raw, key, words):
    with pytest.raises(ParamError) as error:
        check_params({"report": raw})
    assert error.value.key == key and words in error.value.expected


def test_the_report_is_checked_against_the_sections_it_draws_from():
    params = load_params()
    assert check_params(params)["report"].headline_lambda == 1.0
    for changes, key, words in ((["report.policy=argmax"], "report.policy", "evaluation.policies: greedy, sampled"),
                                (["report.headline_lambda=0.5"], "report.headline_lambda", "rewards.fusion.lambdas: 1.0"),
                                (["evaluation.splits=[seen]", "evaluation.episodes_per_k=10"], "report.split",
                                 "evaluation.splits: seen")):
        with pytest.raises(ParamError) as error:
            check_params(apply_overrides(params, changes))
        assert error.value.key == key and words in error.value.expected, changes
    # Each rule runs only where both its sections are at hand (a stage checks what it declares).
    assert check_params({"report": {**REPORT, "policy": "argmax"}})["report"].policy == "argmax"


def test_a_section_no_checker_owns_fails_naming_it():
    with pytest.raises(ParamError) as error:
        check_params({**load_params(), "reprot": {"split": "fresh"}})
    assert error.value.key == "reprot" and "one of the sections env, dataset" in error.value.expected
    with pytest.raises(ParamError, match="the key is missing"):
        check_params({"env": {}}, sections=["env", "report"])


def test_a_section_can_be_registered_by_the_module_that_owns_it(monkeypatch):
    from rgvlm import sections

    monkeypatch.setattr(sections, "_REGISTERED", {})
    seen = []
    register_section("plugin", lambda raw: seen.append(raw) or "checked")
    assert check_params({"plugin": {"x": 1}}) == {"plugin": "checked"} and seen == [{"x": 1}]
    with pytest.raises(ValueError, match="already has a checker"):
        register_section("train", lambda raw: raw)


def test_the_stage_runner_checks_through_the_one_door(monkeypatch):
    from rgvlm import pipeline, sections

    calls = []
    monkeypatch.setattr(sections, "check_params", lambda params, sections=None: calls.append(params))
    pipeline.validate_parameters({"report": REPORT})
    assert calls == [{"report": REPORT}]
    monkeypatch.undo()
    with pytest.raises(ParamError, match=r"report\.split='unseen'"):  # the report had no checker before
        pipeline.validate_parameters({"report": {**REPORT, "split": "unseen"}})
    with pytest.raises(ParamError, match="no checker owns `mystery`"):  # was silently skipped before
        pipeline.validate_parameters({"mystery": {}})


# -- experiments take `dvc exp run -S` overrides ------------------------------------------------
class _Stop(Exception):
    pass


def test_learning_takes_set_params_before_any_work(monkeypatch):
    from experiments import learning

    built = []

    def build_dataset(env, dataset, root, params=None):
        built.append((env, dataset, params))
        raise _Stop  # the first piece of work: stop here

    monkeypatch.setattr(learning, "build_dataset", build_dataset)
    with pytest.raises(_Stop):
        learning.main(["--name", "t", "-S", "train.beta=30", "-S", "dataset.mixture.expert=0.4",
                       "-S", "dataset.mixture.noisy=0.3", "--dataset", "episodes_per_k=4"])
    env, dataset, params = built[0]
    assert params["train"]["beta"] == 30 and params["dataset"]["mixture"]["expert"] == 0.4
    assert dataset == {"episodes_per_k": 4} and env == {}
    # Without -S: params.yaml as it is (the script's behaviour before -S existed).
    with pytest.raises(_Stop):
        learning.main(["--name", "t"])
    assert built[1][2] == load_params()
    # A bad override or a bad value fails before any work, naming the key.
    for bad, key in (("train.bta=30", "train.bta"), ("train.gamma=1.5", "train.gamma"), ("report.split=x", "report.split")):
        with pytest.raises(ParamError) as error:
            learning.main(["--name", "t", "-S", bad])
        assert error.value.key == key
    assert len(built) == 2


def test_no_file_reads_a_profile_without_the_loader():
    """A profile is an overlay now: read whole with yaml or copied over params.yaml, it is wrong."""
    files = [p for top in ("rgvlm", "tests", "benchmarks", "experiments", "tools", "notebooks") for p in (paths.ROOT / top).rglob("*.py")]
    files += [paths.ROOT / "Makefile", paths.ROOT / "benchmarks" / "gpu_session.sh"]
    for path in files:
        if path == Path(__file__).resolve():
            continue  # this file reads the overlays' own text on purpose (and names the patterns)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "profiles" in line and ("safe_load" in line or "copy" in line or "cp " in line):
                raise AssertionError(f"{path}:{number} reads a profile without the loader (rgvlm.params.load_profile): {line.strip()}")
