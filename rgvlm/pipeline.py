"""Running one pipeline stage: its notebook through papermill, then rendered to HTML.

``python -m rgvlm.pipeline STAGE`` is the ``cmd`` of every stage in ``dvc.yaml``. The
stage's notebook is the ``notebooks/*.ipynb`` among its ``deps``, and the parameters
injected are exactly the ``params`` keys the stage declares, read from ``params.yaml``:
a section ``train`` becomes the variable ``train`` (a dict) in the notebook, overriding
the defaults of its ``parameters`` cell. The executed notebook goes to
``outputs/notebooks/`` (cached by DVC) and its HTML to ``reports/notebooks/`` (in git).

A stage expanded by DVC from a ``foreach`` is named ``NAME@KEY`` (``label@rg_vlm``): its notebook
gets the key as the variable ``method`` and its declared sections together as the dict
``params`` (they differ from key to key), and its executed notebook and HTML are named
``<notebook>_<KEY>``.

While the notebook runs, its long loops (LVLM queries, training, rollouts) report their progress
to this process's stderr, the terminal of ``dvc repro``, not to the notebook (:mod:`rgvlm.progress`).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from rgvlm import paths, progress
from rgvlm.atomic import write_bytes_atomic
from rgvlm.params import ParamError, load_params

EXECUTED_NOTEBOOKS = paths.OUTPUTS / "notebooks"
#: Stages outside the default ``dvc repro``, in their own pipeline file (``dvc repro`` with no
#: target reproduces ``dvc.yaml`` alone): the noise sweep. ``dvc repro optional/dvc.yaml:<stage>``
#: runs one; no stage of ``dvc.yaml`` depends on their outputs (that would pull them into it).
OPTIONAL_DVC_YAML = paths.ROOT / "optional" / "dvc.yaml"
#: Every pipeline file the runner knows, the default one first.
PIPELINE_FILES = (paths.DVC_YAML, OPTIONAL_DVC_YAML)
#: What a foreach stage's notebook gets its key as.
FOREACH_KEY_PARAMETER = "method"
_REFERENCE = re.compile(r"\$\{\s*([^}]*?)\s*\}")


def _interpolate(value: Any, context: dict[str, Any], where: str) -> Any:
    """``value`` with every ``${key}``, ``${item}`` or ``${item.field}`` of ``context`` filled in,
    as DVC does for a ``foreach`` stage (only what dvc.yaml uses: no other variables)."""
    if isinstance(value, dict):
        return {_interpolate(k, context, where): _interpolate(v, context, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, context, where) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match) -> str:
        found: Any = context
        for part in match.group(1).split("."):
            if not isinstance(found, dict) or part not in found:
                raise SystemExit(f"{where}: cannot resolve ${{{match.group(1)}}} (the runner knows key, item, item.<field>)")
            found = found[part]
        return str(found)

    return _REFERENCE.sub(lookup, value)


def literal_assignments(path: Path) -> dict[str, Any]:
    """The top-level literal assignments of a Python file, as DVC reads a ``.py`` vars file
    (anything not a literal is skipped, as DVC skips it)."""
    found: dict[str, Any] = {}
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if len(targets) != 1 or not isinstance(targets[0], ast.Name) or node.value is None:
            continue
        try:
            found[targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            continue
    return found


def load_vars(entries: list[Any], base: Path) -> dict[str, Any]:
    """The variables of dvc.yaml's ``vars`` (files relative to ``base``, ``PATH:KEY,...`` picking
    keys; inline mappings) as DVC reads them, for what the runner interpolates: the ``label``
    stage's ``foreach: ${METHOD_TABLE}`` (params.yaml, DVC's default vars, is used by no stage)."""
    variables: dict[str, Any] = {}
    for entry in entries:
        if isinstance(entry, dict):
            variables.update(entry)
            continue
        file, _, keys = str(entry).partition(":")
        path = base / file
        loaded = literal_assignments(path) if path.suffix == ".py" else yaml.safe_load(path.read_text()) or {}
        picked = [key.strip() for key in keys.split(",")] if keys else list(loaded)
        missing = [key for key in picked if key not in loaded]
        if missing:
            raise SystemExit(f"dvc.yaml vars {entry!r}: {path} defines no {', '.join(missing)}")
        variables.update({key: loaded[key] for key in picked})
    return variables


def expand_stages(stages: dict[str, Any], variables: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every stage of ``dvc.yaml`` under the name DVC gives it: a ``foreach`` stage ``NAME`` (over
    a list or a dict, written out or a ``${VAR}`` of ``variables``) becomes one stage ``NAME@KEY``
    per key, its ``do`` interpolated."""
    expanded: dict[str, dict[str, Any]] = {}
    for name, spec in stages.items():
        if "foreach" not in spec:
            expanded[name] = spec
            continue
        items = spec["foreach"]
        if isinstance(items, str):
            reference = _REFERENCE.fullmatch(items.strip())
            if reference is None or reference.group(1) not in (variables or {}):
                raise SystemExit(f"stage {name}: foreach {items!r} is neither a list, a mapping nor a ${{VAR}} of vars")
            items = variables[reference.group(1)]
        pairs = items.items() if isinstance(items, dict) else ((str(item), item) for item in items)
        for key, item in pairs:
            expanded[f"{name}@{key}"] = _interpolate(spec["do"], {"key": key, "item": item}, f"stage {name}@{key}")
    return expanded


def load_stages(dvc_yaml: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every stage of ``dvc_yaml``, foreach stages expanded (:func:`expand_stages`); None: of every
    pipeline file (:data:`PIPELINE_FILES`), whose stage names must differ. The runner reads paths
    relative to the repository root, so a pipeline file in a subfolder sets ``wdir`` to the root."""
    if dvc_yaml is None:
        stages: dict[str, dict[str, Any]] = {}
        for path in (p for p in PIPELINE_FILES if p.exists()):
            found = load_stages(path)
            twice = sorted(set(stages) & set(found))
            if twice:
                raise SystemExit(f"stage(s) {', '.join(twice)} of {path} are also in another pipeline file: the "
                                 "runner addresses stages by name")
            stages.update(found)
        return stages
    spec = yaml.safe_load(dvc_yaml.read_text())
    stages = expand_stages(spec["stages"], load_vars(spec.get("vars", []), dvc_yaml.parent))
    base, root = dvc_yaml.parent.resolve(), paths.ROOT.resolve()
    for name, stage in stages.items() if base.is_relative_to(root) else ():
        if (base / stage.get("wdir", ".")).resolve() != root:
            raise SystemExit(f"stage {name!r} of {dvc_yaml}: wdir {stage.get('wdir', '.')!r} is not the repository "
                             "root; the runner reads every path relative to it (set wdir so that it is)")
    return stages


def stage_spec(stage: str, dvc_yaml: Path | None = None) -> dict[str, Any]:
    """The stage's entry in its pipeline file (a ``foreach`` stage's ``NAME@KEY``: its expansion);
    ``dvc_yaml`` None: looked up in every pipeline file (:func:`load_stages`)."""
    stages = load_stages(dvc_yaml)
    if stage not in stages:
        where = dvc_yaml or ", ".join(str(p.relative_to(paths.ROOT)) for p in PIPELINE_FILES)
        raise SystemExit(f"stage {stage!r} is not in {where}; stages: {', '.join(stages)}")
    return stages[stage]


def stage_notebook(spec: dict[str, Any], stage: str) -> Path:
    notebooks = [d for d in spec.get("deps", []) if str(d).startswith("notebooks/") and str(d).endswith(".ipynb")]
    if len(notebooks) != 1:
        raise SystemExit(f"stage {stage!r} must list exactly one notebooks/*.ipynb in its deps, found {notebooks}")
    return paths.ROOT / notebooks[0]


def stage_parameters(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The parameters the stage declares: whole sections, or dotted keys within one."""
    injected: dict[str, Any] = {}
    for key in spec.get("params", []):
        if not isinstance(key, str):
            raise SystemExit(f"params entry {key!r}: the runner reads keys of params.yaml only")
        section, *parts = key.split(".")
        value: Any = params
        for part in [section, *parts]:
            if not isinstance(value, dict) or part not in value:
                raise ParamError(key, None, "a key in params.yaml (the stage declares it)")
            value = value[part]
        if not parts:
            injected[section] = value
            continue
        node = injected.setdefault(section, {})
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return injected


def validate_parameters(parameters: dict[str, Any]) -> None:
    """Check every injected section, before a kernel starts, through the one registry of section
    checkers (:mod:`rgvlm.sections`); a section no checker owns fails too."""
    from rgvlm.sections import check_params

    check_params(parameters)


def render_html(executed: Path, html_path: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(executed, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(notebook)
    write_bytes_atomic(html_path, body.encode("utf-8"))


def stage_outputs(spec: dict[str, Any]) -> list[Path]:
    """Every path the stage declares as ``outs`` or ``metrics`` (DVC records them after it runs)."""
    found = []
    for entry in [*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]:
        for name in (entry if isinstance(entry, dict) else {entry: None}):
            found.append(paths.ROOT / str(name))
    return found


def sweep_stage_outputs(spec: dict[str, Any]) -> list[Path]:
    """Remove what a killed earlier run of the stage left in its outputs before DVC can record it:
    temporaries of atomic writes (a torn ``_stack.pt`` checkpoint, an answer being written) and
    LVLM-cache claims whose process is gone. Outputs marked ``persist`` (the LVLM caches, the
    models) are kept by DVC across runs, so without this a crash's debris is cached and pushed.
    Live writers' files stay (see :func:`rgvlm.atomic.sweep_debris`)."""
    from rgvlm.atomic import sweep_debris
    from rgvlm.vlm.cache import ResponseCache

    removed: list[Path] = []
    for out in stage_outputs(spec):
        if out.is_dir():
            # ResponseCache.sweep: the temporaries, and the claims and stale claims of a cache.
            removed += ResponseCache(out).sweep()
        else:
            removed += sweep_debris(out.parent, only_named=out.name)
    return removed


#: The distributions whose installed versions each stage records (with their dependencies).
RECORDED_ROOTS = ("rgvlm",)


def installed_versions(roots: tuple[str, ...] = RECORDED_ROOTS) -> dict[str, str]:
    """Name -> installed version of ``roots`` and everything they require (extras not taken),
    found through the installed metadata: the packages that make a stage's outputs."""
    from importlib import metadata

    from packaging.requirements import Requirement

    versions: dict[str, str] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in versions:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency for another platform
        versions[key] = dist.version
        for raw in dist.requires or []:
            requirement = Requirement(raw)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return dict(sorted(versions.items()))


def environment_record() -> dict[str, Any]:
    """What ran a stage: Python, platform and the installed versions (:func:`installed_versions`)."""
    import platform

    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": platform.platform(), "packages": installed_versions()}


def record_environment(executed: Path, record: dict[str, Any]) -> None:
    """Put ``record`` into the executed notebook's metadata (``metadata.rgvlm.environment``):
    every stage has one, cached by DVC with its other outputs, so each run says what made it."""
    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    notebook.metadata.setdefault("rgvlm", {})["environment"] = record
    write_bytes_atomic(executed, nbformat.writes(notebook).encode("utf-8"))


def run_stage(stage: str, params_path: Path = paths.PARAMS) -> None:
    """Execute the stage's notebook with its declared parameters and render it."""
    import papermill

    spec = stage_spec(stage)
    notebook = stage_notebook(spec, stage)
    parameters = stage_parameters(spec, load_params(params_path))
    validate_parameters(parameters)
    for path in sweep_stage_outputs(spec):
        print(f"stage {stage}: removed {path.relative_to(paths.ROOT)}, left by a process that died", file=sys.stderr)
    environment = environment_record()
    key = stage.partition("@")[2]
    if key:
        parameters = {FOREACH_KEY_PARAMETER: key, "params": parameters}
    EXECUTED_NOTEBOOKS.mkdir(parents=True, exist_ok=True)
    name = f"{notebook.stem}_{key}" if key else notebook.stem
    executed = EXECUTED_NOTEBOOKS / f"{name}.ipynb"
    html = paths.REPORT_NOTEBOOKS / f"{name}.html"
    started = time.perf_counter()
    # Keep Jupyter, IPython and matplotlib caches out of the user's home (CI machines).
    for variable, folder in (("MPLCONFIGDIR", "matplotlib"), ("IPYTHONDIR", "ipython")):
        os.environ.setdefault(variable, str(paths.ROOT / ".cache" / folder))
    # The kernel inherits this process's environment and stderr: rgvlm.progress writes its lines
    # to that stderr (the terminal of `dvc repro`, not the notebook), prefixed with the stage.
    os.environ[progress.STAGE] = stage
    # The kernel imports this repository's rgvlm, as this runner did: a kernel puts its working
    # directory after PYTHONPATH, so a PYTHONPATH naming another checkout would win, and a
    # `dvc exp run --queue`/`--temp` experiment (run in a copy under .dvc/tmp/exps) would write
    # into that checkout instead of its own.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(paths.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters=parameters, kernel_name="python3",
            cwd=str(paths.ROOT), progress_bar=False, log_output=False,
        )
    finally:
        # Render even a failed run: the HTML shows the traceback where it happened.
        if executed.exists():
            record_environment(executed, environment)
            render_html(executed, html)
    print(f"stage {stage}: {notebook.name} ran in {time.perf_counter() - started:.1f}s -> {html.relative_to(paths.ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rgvlm.pipeline", description=__doc__)
    parser.add_argument("stage", help="a stage name from dvc.yaml or optional/dvc.yaml (NAME@KEY for a foreach stage, "
                                      "e.g. label@rg_vlm)")
    parser.add_argument("--params", default=str(paths.PARAMS), help="parameters file")
    args = parser.parse_args(argv)
    try:
        run_stage(args.stage, Path(args.params))
    except ParamError as error:
        print(f"stage {args.stage}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
