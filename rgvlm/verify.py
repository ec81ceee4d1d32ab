"""``make verify``: does a reproduction agree with the committed results?

After ``make reproduce`` the working tree holds the regenerated results; the committed ones are
the same files at a git ref (default ``HEAD``, read with ``git show REF:path``). Every number is
compared and ONE table is printed (``--output PATH`` also writes it as Markdown):

- **Exact outputs** must be bit-identical (README "Reproducing and verifying"): the DVC hashes of
  ``data/`` (data.dvc) and of the exact stages' outputs in dvc.lock (:data:`EXACT_LOCK_OUTS`),
  and every value of the exact metric files (:data:`EXACT_METRICS`) except the wall-time and
  cache-dependent fields listed in :data:`IGNORED_KEYS`. One differing value fails the check.
- **Trained numbers** (reports/metrics/evaluation.json, its ``summary`` rows per (policy,
  reward set, split, k) and ``overall`` rows per (policy, reward set, split); ``completion`` and
  ``success``) agree when the two estimates are compatible given their 95% intervals:
  ``|new - old| <= sqrt(hw_old^2 + hw_new^2)`` with ``hw`` half an interval's width (two
  independent estimates of one number then disagree 5% of the time). The table stores, per
  number, the interval a reproduction should fall within (``old -/+ that bound``). Up to the 95%
  binomial upper bound of Binomial(n, 0.05) numbers may fall outside; more fail the check.
  The intervals are the two-level bootstrap over training seeds and layouts
  (:mod:`rgvlm.evaluation.paired`); a reproduction meets the same evaluation layouts as the
  committed run, so the layout part of the two intervals is shared, not independent, and the
  rule errs toward "agree" (it flags a reproduction whose policies differ, not layout luck).
- **Paired differences** (evaluation.json's ``paired`` rows per (policy, split, k, row,
  reference)) are compared by the same rule on the difference and its 95% interval. A ref from
  before the paired statistics has none: its rows are new, not compared.
  reports/metrics/peer.json holds training losses and timings, no estimate with an interval: the
  d3rlpy peers' results are compared through their evaluation.json rows (``d3rlpy_*``).

When exact outputs differ, the installed package versions each run recorded (the executed
notebooks' ``metadata.rgvlm.environment``, :func:`rgvlm.pipeline.environment_record`) are compared
too, and every package whose version differs is named, in the table (rows of kind ``version``) and
in the verdict ("numpy 2.1.0 here, 2.0.2 in the committed run"): the usual cause of a bit-level
difference on a machine of the same kind. The committed run's notebooks are DVC-cached outputs,
read by their hash in the ref's dvc.lock from the local DVC cache, else from the default remote.

Exit status: 0 agree, 1 differs, 2 a file is missing (the message names the path and the ref).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rgvlm.rewards.base import RUN_KEYS
from rgvlm.rewards.registry import LABELLED_METHODS

DATA_DVC = "data.dvc"
DVC_LOCK = "dvc.lock"
EVALUATION = "reports/metrics/evaluation.json"
#: Stages whose outputs are bit-identical, and the outputs of each that are (not their notebooks,
#: HTML, LVLM cache or timing-bearing metric files).
EXACT_LOCK_OUTS: dict[str, tuple[str, ...]] = {
    "dataset_card": ("reports/metrics/dataset.json",),
    **{f"label@{method}": (f"outputs/labels/{method}",) for method in LABELLED_METHODS},
    "rewards": ("outputs/rewards", "reports/metrics/label_quality.json"),
}
#: Metric files compared value by value, exactly.
EXACT_METRICS: tuple[str, ...] = (
    "reports/metrics/dataset.json",
    "reports/metrics/label_quality.json",
    *(f"reports/metrics/labelling_{method}.json" for method in LABELLED_METHODS),
)
#: Committed files a ref from before a rename (issue 11) holds under their old name: read there
#: when the new name is missing at the ref.
OLD_NAMES: dict[str, str] = {
    f"reports/metrics/labelling_{method}.json": f"reports/metrics/labeling_{method}.json" for method in LABELLED_METHODS
}
#: Fields of the exact metric files that are not part of the contract: wall times, and the LVLM
#: calls, tokens and cost a warm LVLM cache saves (``rgvlm.rewards.base.RUN_KEYS``, listed there).
IGNORED_KEYS: frozenset[str] = RUN_KEYS | {"seconds"}
TRAINED_TABLES = {"summary": ("policy", "reward_set", "split", "k"), "overall": ("policy", "reward_set", "split"),
                  "paired": ("policy", "split", "k", "row", "reference")}
#: Per table: the numbers compared, each as (its name in the table, the names of its mean, low, high).
TRAINED_VALUES = {
    "summary": tuple((f"{m}_mean", (f"{m}_mean", f"{m}_low", f"{m}_high")) for m in ("completion", "success")),
    "overall": tuple((f"{m}_mean", (f"{m}_mean", f"{m}_low", f"{m}_high")) for m in ("completion", "success")),
    "paired": (("difference", ("difference", "low", "high")),),
}
#: The row name of each table: a row the ref never evaluated is new, not missing.
ROW_COLUMN = {"summary": "reward_set", "overall": "reward_set", "paired": "row"}
#: Keys a ref from before a rename (issue 11) holds under their old name: the rows of evaluation.json
#: named their reward set ``method``.
OLD_KEYS = {"reward_set": "method"}

LEVEL = 0.95


#: Where the stages' executed notebooks lie (rgvlm.pipeline.EXECUTED_NOTEBOOKS, relative to the root):
#: each records the environment that ran its stage.
EXECUTED_NOTEBOOKS = "outputs/notebooks/"


class VerifyError(RuntimeError):
    """A file the comparison needs is missing (or git cannot read it)."""


@dataclass
class Row:
    # "exact", "interval", "new": in the working tree only (a method added since the ref), not compared, or
    # "version": a package version the two runs recorded differently (said when exact outputs differ;
    # it explains a difference, it does not decide the verdict)
    kind: str
    item: str
    committed: Any
    regenerated: Any
    agree: bool
    allowed: str = ""  # what the regenerated value had to be / fall within


@dataclass
class Report:
    ref: str
    rows: list[Row] = field(default_factory=list)
    #: Why the recorded versions could not be compared (a notebook missing from both caches); "" if they were.
    versions_unknown: str = ""

    @property
    def exact_differ(self) -> list[Row]:
        return [r for r in self.rows if r.kind == "exact" and not r.agree]

    @property
    def trained(self) -> list[Row]:
        return [r for r in self.rows if r.kind == "interval"]

    @property
    def trained_outside(self) -> list[Row]:
        return [r for r in self.trained if not r.agree]

    @property
    def allowed_outside(self) -> int:
        return allowed_outside(len(self.trained), 1.0 - LEVEL, LEVEL)

    @property
    def ok(self) -> bool:
        return not self.exact_differ and len(self.trained_outside) <= self.allowed_outside

    @property
    def new(self) -> list[Row]:
        return [r for r in self.rows if r.kind == "new"]

    @property
    def versions(self) -> list[Row]:
        return [r for r in self.rows if r.kind == "version"]

    def version_note(self) -> str:
        """What the recorded versions say about exact outputs that differ ("" when none differ)."""
        if not self.exact_differ:
            return ""
        if self.versions:
            return ("; recorded versions differ: " + ", ".join(
                f"{r.item} {r.regenerated} here, {r.committed} in the committed run" for r in self.versions))
        if self.versions_unknown:
            return f"; recorded versions not compared: {self.versions_unknown}"
        return "; the two runs recorded the same package versions"

    def verdict(self) -> str:
        exact = [r for r in self.rows if r.kind == "exact"]
        new = f"; {len(self.new)} values new since {self.ref} (not compared)" if self.new else ""
        return (f"{'AGREE' if self.ok else 'DIFFERS'} (committed = {self.ref}, regenerated = working tree): "
                f"{len(exact) - len(self.exact_differ)}/{len(exact)} exact values identical; "
                f"{len(self.trained) - len(self.trained_outside)}/{len(self.trained)} trained numbers within their "
                f"intervals, {len(self.trained_outside)} outside (at most {self.allowed_outside} allowed: the "
                f"{LEVEL:.0%} upper bound of Binomial({len(self.trained)}, {1 - LEVEL:.2f})){new}{self.version_note()}")


def allowed_outside(n: int, p: float = 0.05, level: float = 0.95) -> int:
    """The smallest c with P(X <= c) >= level for X ~ Binomial(n, p): how many of n numbers may
    fall outside their intervals by chance."""
    if n <= 0:
        return 0
    try:
        from scipy.stats import binom

        return int(binom.ppf(level, n, p))
    except ImportError:  # pragma: no cover - scipy is a dependency; the exact loop is the fallback
        total, c = 0.0, 0
        while True:
            total += math.comb(n, c) * p**c * (1 - p) ** (n - c)
            if total >= level - 1e-12:
                return c
            c += 1


# -- reading ----------------------------------------------------------------------------
def committed_text(root: Path, ref: str, path: str) -> str:
    """The file at ``ref``; one renamed since (:data:`OLD_NAMES`) under its old name if ``ref`` lacks the new."""
    try:
        return _git_show(root, ref, path)
    except VerifyError:
        if path not in OLD_NAMES:
            raise
        try:
            return _git_show(root, ref, OLD_NAMES[path])
        except VerifyError:
            pass
        raise


def _git_show(root: Path, ref: str, path: str) -> str:
    try:
        result = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=root, capture_output=True, text=True)
    except OSError as error:  # no git, or no such directory
        raise VerifyError(f"committed file {path} at ref {ref} cannot be read: {error}") from error
    if result.returncode != 0:
        raise VerifyError(f"committed file {path} is missing at ref {ref} ({result.stderr.strip() or 'git show failed'}); "
                          f"compare against a ref that has it: python -m rgvlm.verify --ref REF")
    return result.stdout


def regenerated_text(root: Path, ref: str, path: str) -> str:
    file = root / path
    if not file.is_file():
        raise VerifyError(f"regenerated file {path} is missing from the working tree {root} (committed at ref {ref}): "
                          "run `make reproduce` first")
    return file.read_text(encoding="utf-8")


def _parse(text: str, path: str, where: str, loader) -> Any:
    try:
        return loader(text)
    except (ValueError, yaml.YAMLError) as error:
        raise VerifyError(f"{where} {path} cannot be parsed: {error}") from error


def _pair(root: Path, ref: str, path: str, loader) -> tuple[Any, Any]:
    return (_parse(committed_text(root, ref, path), path, f"committed ({ref})", loader),
            _parse(regenerated_text(root, ref, path), path, "regenerated", loader))


# -- comparisons ------------------------------------------------------------------------
def leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten JSON to {path: value}, leaving out :data:`IGNORED_KEYS`."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if str(key) not in IGNORED_KEYS:
                out.update(leaves(value, f"{prefix}/{key}"))
        return out
    if isinstance(obj, list):
        out = {}
        for i, value in enumerate(obj):
            out.update(leaves(value, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


_MISSING = "(missing)"


NEW = "not at the ref: new since, not compared"


def compare_exact_json(root: Path, ref: str, path: str, methods_at_ref: set[str]) -> list[Row]:
    method = path.removeprefix("reports/metrics/labelling_").removesuffix(".json")
    if path != f"reports/metrics/labelling_{method}.json" or method in methods_at_ref:
        old, new = _pair(root, ref, path, json.loads)
    else:  # a method added since the ref: its labelling stage is not in the ref's dvc.lock
        _parse(regenerated_text(root, ref, path), path, "regenerated", json.loads)  # it must be there and parse
        return [Row("new", path, _MISSING, "(present)", True, NEW)]
    old, new = leaves(old), leaves(new)
    rows = []
    for key in sorted(set(old) | set(new), key=lambda k: (k not in old, k)):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if key not in old:  # a value the ref's code did not write (a measure or method added since)
            rows.append(Row("new", f"{path}:{key}", a, b, True, NEW))
            continue
        rows.append(Row("exact", f"{path}:{key}", a, b, a == b and type(a) is type(b), "identical"))
    return rows


def _lock_outs(lock: dict, stage: str) -> dict[str, str]:
    stages = (lock or {}).get("stages", {})
    # A ref from before the one labelling stage (issue 11) names label@<method> label_<method>.
    entry = stages.get(stage) or stages.get(stage.replace("@", "_")) or {}
    return {o["path"]: o.get("md5", "") for o in entry.get("outs", [])}


def compare_hashes(root: Path, ref: str) -> list[Row]:
    rows = []
    old, new = _pair(root, ref, DATA_DVC, yaml.safe_load)
    a = {o["path"]: o.get("md5", "") for o in (old or {}).get("outs", [])}
    b = {o["path"]: o.get("md5", "") for o in (new or {}).get("outs", [])}
    for path in sorted(set(a) | set(b)):
        rows.append(Row("exact", f"{DATA_DVC}: {path} md5", a.get(path, _MISSING), b.get(path, _MISSING),
                        a.get(path) == b.get(path) and path in a, "identical"))
    old, new = _pair(root, ref, DVC_LOCK, yaml.safe_load)
    for stage, outs in EXACT_LOCK_OUTS.items():
        a, b = _lock_outs(old, stage), _lock_outs(new, stage)
        if not a and b and stage.startswith("label@"):  # a method added since the ref
            rows += [Row("new", f"{DVC_LOCK}: {stage} {path} md5", _MISSING, b.get(path, _MISSING), True, NEW)
                     for path in outs]
            continue
        for path in outs:
            x, y = a.get(path, _MISSING), b.get(path, _MISSING)
            rows.append(Row("exact", f"{DVC_LOCK}: {stage} {path} md5", x, y, x == y and x != _MISSING, "identical"))
    return rows


def _halfwidth(row: dict, low: str, high: str) -> float:
    return (float(row[high]) - float(row[low])) / 2.0


def _row_key(row: dict, keys: tuple[str, ...]) -> tuple:
    """The row's values of ``keys``; a key missing under its name is read under its old one (:data:`OLD_KEYS`)."""
    return tuple(row.get(k, row.get(OLD_KEYS.get(k, k), "all")) for k in keys)


def compare_trained(root: Path, ref: str) -> list[Row]:
    old, new = _pair(root, ref, EVALUATION, json.loads)
    # Rows of a reward set the ref never trained are new, not missing (a method added since).
    reward_sets_at_ref = {_row_key(r, ("reward_set",))[0] for table in ("summary", "overall")
                          for r in old.get(table, [])}
    rows = []
    for table, keys in TRAINED_TABLES.items():
        if table not in old and table in new:  # a table the ref's code did not write (paired, before issue 30)
            rows += [Row("new", f"{table} " + " ".join(f"{k}={v}" for k, v in zip(keys, _row_key(r, keys), strict=True))
                         + f" {name}", _MISSING, r[mean], True, NEW)
                     for r in new[table] for name, (mean, _, _) in TRAINED_VALUES[table]]
            continue
        a = {_row_key(r, keys): r for r in old.get(table, [])}
        b = {_row_key(r, keys): r for r in new.get(table, [])}
        for key in sorted(set(a) | set(b), key=lambda t: tuple(str(x) for x in t)):
            label = f"{table} " + " ".join(f"{k}={v}" for k, v in zip(keys, key, strict=True))
            for name, (mean, low, high) in TRAINED_VALUES[table]:
                item = f"{label} {name}"
                if key not in a and key[keys.index(ROW_COLUMN[table])] not in reward_sets_at_ref:
                    rows.append(Row("new", item, _MISSING, b[key][mean], True, NEW))
                    continue
                if key not in a or key not in b:
                    rows.append(Row("exact", item, a[key][mean] if key in a else _MISSING,
                                    b[key][mean] if key in b else _MISSING, False, "the row in both files"))
                    continue
                x, y = float(a[key][mean]), float(b[key][mean])
                bound = math.hypot(_halfwidth(a[key], low, high), _halfwidth(b[key], low, high))
                rows.append(Row("interval", item, x, y, abs(y - x) <= bound + 1e-12,
                                f"[{x - bound:.4f}, {x + bound:.4f}] (+/- {bound:.4f})"))
    return rows


def _environment(text: str, where: str) -> dict[str, Any] | None:
    """An executed notebook's environment record (None: a notebook from before the records)."""
    try:
        record = json.loads(text).get("metadata", {}).get("rgvlm", {}).get("environment")
    except (ValueError, AttributeError) as error:
        raise VerifyError(f"{where} is not a notebook: {error}") from error
    return record if isinstance(record, dict) else None


def _cached_text(repo, md5: str) -> str:
    """A DVC object by its hash: from the local cache of ``repo`` (a dvc.repo.Repo), else its default
    remote (the committed run's executed notebooks are cached outputs, not in git)."""
    for cache in (repo.cache.local, repo.cache.legacy):  # DVC 3 hashes, then DVC 2's
        path = Path(cache.oid_to_path(md5))
        if path.is_file():
            return path.read_text(encoding="utf-8")
    try:
        remote = repo.cloud.get_remote_odb(None, "verify")
        with remote.fs.open(remote.oid_to_path(md5), "rb") as file:
            return file.read().decode("utf-8")
    # Any failure of a remote's client (DVC's, an fsspec backend's, its network library's own errors)
    # means only that the versions cannot be compared: said in the verdict, never fatal to the check.
    except Exception as error:  # noqa: BLE001
        raise VerifyError(f"object {md5} is in neither the DVC cache nor the default remote "
                          f"({type(error).__name__}: {error})") from error


def compare_versions(root: Path, ref: str, lock_at_ref: dict) -> tuple[list[Row], str]:
    """The package versions (and Python) recorded by the executed notebooks of the stages whose
    outputs are exact, committed (at ``ref``, through the DVC cache) against regenerated (the working
    tree): one ``version`` row per package that differs, with the stages where it does; and why the
    records could not be read ("" when they were)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    notebooks = [(stage, path, md5) for stage in EXACT_LOCK_OUTS
                 for path, md5 in _lock_outs(lock_at_ref, stage).items() if path.startswith(EXECUTED_NOTEBOOKS) and md5]
    try:
        repo = Repo(str(root))
    except DvcException as error:
        return [], f"{root} is not a DVC repository ({error})"
    old: dict[str, dict[str, str]] = {}  # package -> stage -> version, committed
    new: dict[str, dict[str, str]] = {}
    with repo:
        for stage, path, md5 in notebooks:
            try:
                committed = _environment(_cached_text(repo, md5), f"committed ({ref}) {path}")
                regenerated = _environment(regenerated_text(root, ref, path), f"regenerated {path}")
            except VerifyError as error:
                return [], f"{path}: {error}"
            if committed is None or regenerated is None:
                return [], f"{path} ({'committed' if committed is None else 'regenerated'}) records no environment"
            for record, into in ((committed, old), (regenerated, new)):
                for name, version in {"python": record.get("python"), **record.get("packages", {})}.items():
                    into.setdefault(name, {})[stage] = version
    if not notebooks:
        return [], f"the dvc.lock at {ref} lists no executed notebook of the exact stages"
    rows = []
    for name in sorted(set(old) | set(new)):
        stages = [st for st in EXACT_LOCK_OUTS if old.get(name, {}).get(st, _MISSING) != new.get(name, {}).get(st, _MISSING)]
        if stages:
            a = sorted({str(old.get(name, {}).get(st, "(not installed)")) for st in stages})
            b = sorted({str(new.get(name, {}).get(st, "(not installed)")) for st in stages})
            rows.append(Row("version", name, "/".join(a), "/".join(b), False,
                            f"a cause to look at (recorded by {', '.join(stages)})"))
    return rows, ""


def compare(root: Path | str = ".", ref: str = "HEAD") -> Report:
    """Every comparison of the committed results at ``ref`` with the working tree at ``root``."""
    root = Path(root)
    report = Report(ref)
    steps = [(f"{DATA_DVC} / {DVC_LOCK}", lambda: compare_hashes(root, ref))]
    lock_at_ref = _parse(committed_text(root, ref, DVC_LOCK), DVC_LOCK, f"committed ({ref})", yaml.safe_load)
    methods_at_ref = {m for m in LABELLED_METHODS if _lock_outs(lock_at_ref, f"label@{m}")}
    steps += [(path, lambda path=path: compare_exact_json(root, ref, path, methods_at_ref)) for path in EXACT_METRICS]
    steps += [(EVALUATION, lambda: compare_trained(root, ref))]
    for what, step in steps:
        try:
            report.rows += step()
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise VerifyError(f"{what} (committed at ref {ref} or regenerated) does not have the expected layout: "
                              f"{type(error).__name__}: {error}") from error
    if report.exact_differ:  # only then: a version that differs is the first thing to look at
        versions, report.versions_unknown = compare_versions(root, ref, lock_at_ref)
        report.rows += versions
    return report


# -- output ------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value) if not isinstance(value, str) else value
    return (text if len(text) <= 60 else text[:57] + "...").replace("|", "\\|")


def render(report: Report) -> str:
    lines = [report.verdict(), "",
             "| result | kind | item | committed | regenerated | must be / fall within |",
             "|---|---|---|---|---|---|"]
    for r in report.rows:
        lines.append(f"| {'agree' if r.agree else 'DIFFERS'} | {r.kind} | {r.item.replace('|', '/')} | "
                     f"{_fmt(r.committed)} | {_fmt(r.regenerated)} | {r.allowed} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rgvlm.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="HEAD", help="git ref of the committed results (default HEAD)")
    parser.add_argument("--root", default=".", help="repository root (default: the current directory)")
    parser.add_argument("--output", help="also write the table to this Markdown file (e.g. reports/verify.md)")
    args = parser.parse_args(argv)
    try:
        report = compare(Path(args.root), args.ref)
    except VerifyError as error:
        print(f"verify: error: {error}", file=sys.stderr)
        return 2
    table = render(report)
    print(table, end="")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table, encoding="utf-8")
    print(report.verdict(), file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
