"""What the experiments share on the command line: the parameters they start from (params.yaml or
a profile, with ``-S`` overrides in the syntax of ``dvc exp run -S``, checked before any work), the
``k=v,...`` section overrides, and the datasets they collect for those overrides."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from rgvlm import paths
from rgvlm.params import apply_overrides, load_params, load_profile
from rgvlm.sections import check_params


def add_params_options(parser: argparse.ArgumentParser) -> None:
    """``--profile`` and ``-S KEY=VALUE`` (repeatable)."""
    parser.add_argument("--profile", default=None,
                        help="start from this profile (profiles/NAME.yaml, or a path) instead of params.yaml")
    parser.add_argument("-S", "--set-param", dest="set_params", action="append", default=[], metavar="KEY=VALUE",
                        help="a change to the parameters in the syntax of `dvc exp run -S` (e.g. -S train.beta=30 "
                             "-S dataset.mixture.expert=0.5; +KEY=VALUE adds a key, ~KEY removes one); repeatable")


def checked_params(args: argparse.Namespace) -> dict:
    """The parameters ``args`` ask for (:func:`add_params_options`), every section checked by its
    checker (rgvlm.sections) before any work."""
    params = load_params() if args.profile is None else load_profile(args.profile)
    params = apply_overrides(params, args.set_params)
    check_params(params)
    return params


def parse_overrides(text: str) -> dict:
    """``"tau=0.9,encoder=entities"`` -> ``{"tau": 0.9, "encoder": "entities"}`` (YAML scalars)."""
    return {key.strip(): yaml.safe_load(value) for key, _, value in
            (item.partition("=") for item in filter(None, text.split(",")))}


def build_dataset(env: dict, dataset: dict, root: Path = paths.OUTPUTS / "experiments" / "data",
                  params: dict | None = None) -> Path:
    """The dataset for these overrides of ``params`` (default: params.yaml), collected once under
    ``root`` and cached by their hash."""
    params = load_params() if params is None else copy.deepcopy(params)
    params["env"].update(env)
    for key, value in dataset.items():  # dotted keys reach into nested sections: mixture.expert=0.5
        *parents, leaf = key.split(".")
        section = params["dataset"]
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    key = hashlib.sha256(json.dumps([params["env"], params["dataset"]], sort_keys=True).encode()).hexdigest()[:12]
    out = root / key
    if not (out / "manifest.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        params_file = out.with_suffix(".params.yaml")
        params_file.write_text(yaml.safe_dump({"env": params["env"], "dataset": params["dataset"]}))
        subprocess.run([sys.executable, "-m", "rgvlm.data", "collect", "--params", str(params_file), "--out", str(out)],
                       check=True, cwd=paths.ROOT)
    return out


def command(module: str, argv: list[str] | None) -> str:
    """How the experiment was run, for its JSON."""
    return f"python -m experiments.{module} " + " ".join(argv if argv is not None else sys.argv[1:])
