"""Which ``rgvlm`` modules a stage's notebook runs, and whether its ``dvc.yaml`` deps cover them.

Static analysis with :mod:`ast`: the notebook's code cells, then every ``rgvlm`` module they
import, transitively: ``import rgvlm.x``, ``from rgvlm.x import y`` (``y`` counts when it is a
submodule), relative imports, imports inside functions (they may run) and the ``__init__.py`` of
every package on the way. Imports under ``if TYPE_CHECKING:`` never run and are skipped, and so
is a module with no statements (an empty ``__init__.py`` runs nothing; once it has code, the
stages that import through it must list it). Dynamic imports (``import_module``) are not seen,
but two are known: a ``label@<method>`` stage runs the module of the registered method
(:mod:`rgvlm.rewards.registry`), so that module and its imports count for that stage, and the
``noise_sweep`` stage (``optional/dvc.yaml``) runs those of every method that asks the LVLM.

A dep covers a module when it is the module's file or a directory above it (``rgvlm/rewards``).
The modules in :data:`NOT_DEPS` are followed (what they import counts) but never required.
``python -m tools.dvc_deps`` (``make check-deps``) prints each stage's missing modules and exits 1 when there are any.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from rgvlm import paths

PACKAGE = "rgvlm"
#: Modules that cannot change any stage output, so no stage depends on them: changing how progress
#: is shown must not rerun the pipeline. ``rgvlm/progress.py`` only writes lines to the terminal and
#: imports no ``rgvlm`` module (tests/test_dvc_deps.py checks that, so it hides no dependency).
NOT_DEPS = frozenset({"rgvlm/progress.py"})


def notebook_source(notebook: Path) -> str:
    """The notebook's code cells as one Python source (IPython ``%``/``!`` lines blanked)."""
    cells = json.loads(notebook.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        lines += ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return "\n".join(lines)


def _module_file(name: str, root: Path) -> Path | None:
    """``rgvlm.a.b`` -> ``rgvlm/a/b.py`` or ``rgvlm/a/b/__init__.py``, if it exists."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST, package: str | None = None) -> set[str]:
    """Every ``rgvlm`` module name the code may import (``package``: for relative imports)."""
    names: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    continue
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # submodules, if they exist
    return {name for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")}


def module_closure(names: set[str], root: Path = paths.ROOT) -> set[str]:
    """The files (relative POSIX paths) of the ``rgvlm`` modules ``names`` run, transitively."""
    seen: set[str] = set()
    files: set[str] = set()
    queue = list(names)
    while queue:
        name = queue.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, then c
            prefix = ".".join(parts[:i])
            if prefix in seen:
                continue
            seen.add(prefix)
            path = _module_file(prefix, root)
            if path is None:
                continue  # an attribute (``from rgvlm.x import some_function``), not a module
            tree = ast.parse(path.read_text(), filename=str(path))
            package = prefix if path.name == "__init__.py" else prefix.rpartition(".")[0]
            queue.extend(imported_names(tree, package))
            body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
            if body and path.relative_to(root).as_posix() not in NOT_DEPS:
                files.add(path.relative_to(root).as_posix())
    return files


def notebook_modules(notebook: Path, root: Path = paths.ROOT) -> set[str]:
    """The ``rgvlm`` module files the notebook runs (relative POSIX paths)."""
    tree = ast.parse(notebook_source(notebook), filename=str(notebook))
    return module_closure(imported_names(tree), root)


def missing_deps(deps: list, modules: set[str]) -> list[str]:
    """The modules no dep covers (a dep covers its own file and everything under it)."""
    declared = [str(next(iter(d)) if isinstance(d, dict) else d).rstrip("/") for d in deps]
    return sorted(m for m in modules if not any(m == d or m.startswith(d + "/") for d in declared))


def imported_by_name(stage: str) -> set[str]:
    """The modules the stage's notebook imports by name: a ``label@<method>`` stage's method module;
    the noise sweep's, the module of every method that asks the LVLM (any may be in its params)."""
    from rgvlm.rewards.registry import METHODS

    key = stage.partition("@")[2]
    if stage == "noise_sweep":
        return {method.module for method in METHODS.values() if method.uses_lvlm}
    return {METHODS[key].module} if key in METHODS else set()


def stage_missing(spec: dict, root: Path = paths.ROOT, by_name: set[str] = frozenset()) -> list[str]:
    """The modules the stage's notebook runs (and the modules ``by_name`` run) that its deps do not cover."""
    deps = spec.get("deps", [])
    notebooks = [str(d) for d in deps if str(d).startswith("notebooks/") and str(d).endswith(".ipynb")]
    modules = set().union(module_closure(set(by_name), root), *(notebook_modules(root / nb, root) for nb in notebooks))
    return missing_deps(deps, modules)


def check(dvc_yaml: Path | None = None, root: Path = paths.ROOT) -> dict[str, list[str]]:
    """``{stage: missing modules}`` for every stage of ``dvc_yaml`` (None: of every pipeline file,
    ``optional/dvc.yaml`` too; foreach stages expanded) that misses any."""
    from rgvlm.pipeline import load_stages

    missing = {stage: stage_missing(spec, root, imported_by_name(stage)) for stage, spec in load_stages(dvc_yaml).items()}
    return {stage: modules for stage, modules in missing.items() if modules}


def main() -> int:
    missing = check()
    for stage, modules in missing.items():
        print(f"{stage}: deps miss {', '.join(modules)}")
    if not missing:
        print("every stage's deps cover the rgvlm modules its notebook imports")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
