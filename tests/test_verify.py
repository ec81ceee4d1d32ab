"""`make verify` (rgvlm.verify) on a temporary git repository: committed metric files, then the
working tree changed as a reproduction would change it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rgvlm import verify

ROOT = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def evaluation() -> dict:
    rows = []
    for reward_set in ("sparse", "oracle", "rg_vlm"):
        for k in (1, 2, 3):
            for policy in ("greedy", "sampled"):
                mean = 0.1 * k
                rows.append({"policy": policy, "reward_set": reward_set, "split": "fresh", "k": k, "num_seeds": 3,
                             "completion_mean": mean, "completion_low": mean - 0.05, "completion_high": mean + 0.05,
                             "success_mean": mean / 2, "success_low": mean / 2 - 0.04, "success_high": mean / 2 + 0.04})
    overall = [{key: value for key, value in r.items() if key != "k"} for r in rows if r["k"] == 1]
    return {"summary": rows, "overall": overall, "provenance": {"seconds": 12.0}}


def write(repo: Path, path: str, obj) -> None:
    file = repo / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(obj) if path.endswith((".lock", ".dvc")) else json.dumps(obj, indent=1))


@pytest.fixture
def repo(tmp_path):
    """A git repository with every file verify reads committed, the working tree equal to HEAD."""
    git(tmp_path, "init", "-q")
    write(tmp_path, "data.dvc", {"outs": [{"path": "data", "md5": "d" * 32 + ".dir"}]})
    stages = {stage: {"outs": [{"path": p, "md5": f"{i:032x}"} for i, p in enumerate(outs)]
                      + [{"path": f"reports/notebooks/{stage}.html", "md5": "0" * 32}]}
              for stage, outs in verify.EXACT_LOCK_OUTS.items()}
    write(tmp_path, "dvc.lock", {"schema": "2.0", "stages": stages})
    for path in verify.EXACT_METRICS:
        write(tmp_path, path, {"spearman": 0.5, "cost": {"lvlm_calls": 10, "wall_time_s": 3.2, "cache_hits": 0}})
    write(tmp_path, verify.EVALUATION, evaluation())
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "results")
    return tmp_path


def edit(repo: Path, path: str, change) -> None:
    file = repo / path
    obj = yaml.safe_load(file.read_text()) if path.endswith((".lock", ".dvc")) else json.loads(file.read_text())
    change(obj)
    write(repo, path, obj)


def test_identical_agrees_and_exits_0(repo, capsys):
    assert verify.main(["--root", str(repo)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("AGREE")
    assert "DIFFERS |" not in out
    report = verify.compare(repo)
    assert len(report.trained) == 2 * (18 + 6) and report.trained_outside == []
    assert "interval" in out and "+/-" in out  # each trained number records what it had to fall within


def test_timings_and_cache_hits_are_ignored(repo):
    def change(obj):
        obj["cost"].update(wall_time_s=99.0, cache_hits=10)
    edit(repo, "reports/metrics/labelling_rg_vlm.json", change)
    edit(repo, verify.EVALUATION, lambda obj: obj["provenance"].update(seconds=1.0))
    assert verify.compare(repo).ok


def test_an_exact_output_changed_fails_and_is_named(repo, capsys):
    edit(repo, "reports/metrics/label_quality.json", lambda obj: obj.update(spearman=0.50000001))
    assert verify.main(["--root", str(repo)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("DIFFERS")
    assert "| DIFFERS | exact | reports/metrics/label_quality.json:/spearman | 0.5 | 0.5 |" in out


def test_a_changed_hash_in_dvc_lock_fails(repo, capsys):
    def change(obj):
        obj["stages"]["label@embedding"]["outs"][0]["md5"] = "f" * 32 + ".dir"
        obj["stages"]["rewards"]["outs"][-1]["md5"] = "e" * 32  # the notebook's HTML: not compared
    edit(repo, "dvc.lock", change)
    assert verify.main(["--root", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "| DIFFERS | exact | dvc.lock: label@embedding outputs/labels/embedding md5 |" in out
    assert "html" not in out


def test_a_ref_from_before_the_one_labelling_stage_is_compared_under_its_old_stage_names(repo):
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    lock["stages"] = {name.replace("@", "_"): stage for name, stage in lock["stages"].items()}
    write(repo, "dvc.lock", lock)
    git(repo, "commit", "-qam", "label_<method> stages")
    edit(repo, "dvc.lock", lambda obj: obj.update(stages={name.replace("label_", "label@"): stage
                                                          for name, stage in obj["stages"].items()}))
    report = verify.compare(repo)
    assert report.ok and not report.exact_differ
    assert any(row.item.startswith("dvc.lock: label@rg_vlm") for row in report.rows)


def test_a_ref_from_before_the_renames_is_compared_under_its_old_file_and_key_names(repo):
    """Issue 11 renamed labeling_<method>.json to labelling_<method>.json and evaluation.json's
    ``method`` to ``reward_set``: a ref that still has the old names is read under them."""
    for path, old in verify.OLD_NAMES.items():
        git(repo, "mv", path, old)
    edit(repo, verify.EVALUATION, lambda obj: [row.update(method=row.pop("reward_set"))
                                               for row in obj["summary"] + obj["overall"]])
    git(repo, "commit", "-qam", "the old names")
    for path, old in verify.OLD_NAMES.items():
        git(repo, "mv", old, path)
    edit(repo, verify.EVALUATION, lambda obj: [row.update(reward_set=row.pop("method"))
                                               for row in obj["summary"] + obj["overall"]])
    report = verify.compare(repo)
    assert report.ok and not report.exact_differ and len(report.trained) == 2 * (18 + 6)
    assert any(row.item.startswith("reports/metrics/labelling_rg_vlm.json:") for row in report.rows)


def test_a_method_added_since_the_ref_is_new_not_different(repo, capsys):
    """Against a ref from before a method (or a label-quality measure) existed, what only the working
    tree has is listed as new and not compared; what the ref has is compared as before."""
    added = verify.LABELLED_METHODS[-2]
    git(repo, "rm", "-q", f"reports/metrics/labelling_{added}.json")
    edit(repo, "dvc.lock", lambda obj: obj["stages"].pop(f"label@{added}"))
    edit(repo, verify.EVALUATION, lambda obj: [obj[table].remove(row) for table in ("summary", "overall")
                                               for row in list(obj[table]) if row["reward_set"] == "rg_vlm"])
    git(repo, "commit", "-qam", "before the method")
    git(repo, "checkout", "HEAD~1", "--", ".")
    edit(repo, "reports/metrics/label_quality.json", lambda obj: obj.update(voc=0.8))
    report = verify.compare(repo)
    assert report.ok and not report.exact_differ
    new = {row.item for row in report.new}
    assert f"reports/metrics/labelling_{added}.json" in new and "reports/metrics/label_quality.json:/voc" in new
    assert any(item.startswith(f"dvc.lock: label@{added} ") for item in new)
    assert any(item.startswith("summary policy=greedy reward_set=rg_vlm") for item in new)
    assert len(report.trained) == 2 * (12 + 4)  # sparse and oracle, still compared
    assert verify.main(["--root", str(repo)]) == 0 and "values new since HEAD (not compared)" in capsys.readouterr().out
    edit(repo, verify.EVALUATION, lambda obj: obj["summary"].pop(0))  # a row the ref has, gone: still differs
    assert not verify.compare(repo).ok


def test_trained_numbers_moved_within_their_intervals_agree(repo):
    def change(obj):
        for row in obj["summary"] + obj["overall"]:
            row["completion_mean"] += 0.06  # < sqrt(0.05^2 + 0.05^2) = 0.0707
            row["success_mean"] -= 0.05  # < sqrt(0.04^2 + 0.04^2) = 0.0566
    edit(repo, verify.EVALUATION, change)
    report = verify.compare(repo)
    assert report.trained_outside == [] and report.ok


def test_trained_numbers_far_outside_fail_beyond_the_allowed_count(repo, capsys):
    n = 2 * (18 + 6)
    allowed = verify.allowed_outside(n)
    assert allowed == 5  # Binomial(48, 0.05): P(X <= 5) >= 0.95 > P(X <= 4)

    def move(count):
        def change(obj):
            for row in obj["summary"][:count]:
                row["completion_mean"] += 0.5
        return change

    edit(repo, verify.EVALUATION, move(allowed))
    assert verify.compare(repo).ok  # as many outside as chance allows: agree
    git(repo, "checkout", "--", verify.EVALUATION)
    edit(repo, verify.EVALUATION, move(allowed + 1))
    assert verify.main(["--root", str(repo), "--output", str(repo / "reports" / "verify.md")]) == 1
    out = capsys.readouterr().out
    assert out.count("| DIFFERS | interval |") == allowed + 1
    assert (repo / "reports" / "verify.md").read_text() == out


def test_allowed_outside_matches_the_exact_binomial_loop():
    import math

    for n in (1, 20, 48, 288, 672):
        total, c = 0.0, 0
        while True:
            total += math.comb(n, c) * 0.05**c * 0.95 ** (n - c)
            if total >= 0.95:
                break
            c += 1
        assert verify.allowed_outside(n) == c


def test_a_missing_row_differs(repo):
    edit(repo, verify.EVALUATION, lambda obj: obj["overall"].pop())
    report = verify.compare(repo)
    assert not report.ok and any(r.regenerated == "(missing)" for r in report.exact_differ)


def test_missing_files_give_a_clear_error(repo, capsys):
    (repo / "reports/metrics/label_quality.json").unlink()
    assert verify.main(["--root", str(repo)]) == 2
    err = capsys.readouterr().err
    assert "regenerated file reports/metrics/label_quality.json is missing from the working tree" in err
    assert "HEAD" in err
    git(repo, "rm", "-q", "--cached", "reports/metrics/label_quality.json")
    git(repo, "commit", "-q", "-m", "drop")
    write(repo, "reports/metrics/label_quality.json", {"spearman": 0.5})
    with pytest.raises(verify.VerifyError, match=r"committed file reports/metrics/label_quality.json is missing at ref HEAD"):
        verify.compare(repo)
    with pytest.raises(verify.VerifyError, match="at ref nosuchref"):
        verify.compare(repo, "nosuchref")


def test_the_module_runs_from_the_command_line(repo):
    result = subprocess.run([sys.executable, "-m", "rgvlm.verify"], cwd=repo, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("AGREE")


def test_an_unexpected_layout_is_a_clear_error(repo):
    edit(repo, verify.EVALUATION, lambda obj: obj["summary"][0].pop("completion_low"))
    with pytest.raises(verify.VerifyError, match=r"reports/metrics/evaluation.json .*expected layout.*completion_low"):
        verify.compare(repo)


def _paired_rows() -> list[dict]:
    return [{"policy": "sampled", "split": "fresh", "k": k, "row": "oracle", "reference": "sparse",
             "kind": "row - sparse", "difference": 0.1, "low": 0.05, "high": 0.15, "se": 0.025, "p": 1e-4}
            for k in (1, 2, 3)]


def test_paired_differences_new_since_a_ref_without_them_are_not_compared(repo):
    edit(repo, verify.EVALUATION, lambda obj: obj.update(paired=_paired_rows()))
    report = verify.compare(repo)
    assert report.ok and len(report.new) == 3 and all(r.item.startswith("paired ") for r in report.new)


def test_paired_differences_are_compared_by_their_intervals(repo):
    edit(repo, verify.EVALUATION, lambda obj: obj.update(paired=_paired_rows()))
    git(repo, "commit", "-qam", "paired")
    report = verify.compare(repo)
    assert report.ok and len([r for r in report.trained if r.item.startswith("paired ")]) == 3

    def move(obj):
        obj["paired"][0]["difference"] += 0.2  # far beyond sqrt(0.05^2 + 0.05^2)
    edit(repo, verify.EVALUATION, move)
    outside = verify.compare(repo).trained_outside
    assert [r.item for r in outside] == ["paired policy=sampled split=fresh k=1 row=oracle reference=sparse difference"]


# -- recorded package versions, named when exact outputs differ ----------------------------------
def notebook(versions: dict[str, str], python: str = "3.11.7") -> bytes:
    """An executed notebook as rgvlm.pipeline leaves it: the environment record in its metadata."""
    record = {"python": python, "implementation": "CPython", "platform": "Linux", "packages": versions}
    return json.dumps({"cells": [], "metadata": {"rgvlm": {"environment": record}}, "nbformat": 4,
                       "nbformat_minor": 5}).encode()


@pytest.fixture
def dvc_repo(repo, tmp_path_factory, monkeypatch):
    """``repo`` as a DVC repository whose exact stages' executed notebooks are cached outputs in
    dvc.lock: plant(committed, regenerated[, where]) puts the committed notebooks in the DVC cache
    (or, where="remote", only in a directory remote), commits their hashes, and writes the
    regenerated ones into the working tree."""
    import hashlib

    from dvc.repo import Repo

    # DVC's loggers write to the sys.stdout/stderr of whichever test first imported dvc (pytest's
    # capture, closed since): to pytest's own log capture instead, through the root logger.
    for name in ("dvc", "dvc_objects", "dvc_data"):
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.mktemp("dvc-site")))
    Repo.init(str(repo)).close()

    def plant(committed: bytes, regenerated: bytes, where: str = "cache") -> None:
        md5 = hashlib.md5(committed).hexdigest()
        with Repo(str(repo)) as dvc:
            cached = Path(dvc.cache.local.oid_to_path(md5))
        if where == "remote":
            store = tmp_path_factory.mktemp("remote")
            (repo / ".dvc" / "config").write_text(f"[core]\n    remote = store\n['remote \"store\"']\n    url = {store}\n")
            cached = store / "files" / "md5" / md5[:2] / md5[2:]
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(committed)

        def change(lock):
            for stage in verify.EXACT_LOCK_OUTS:
                lock["stages"][stage]["outs"].append({"path": f"outputs/notebooks/{stage}.ipynb", "md5": md5})
        edit(repo, "dvc.lock", change)
        for stage in verify.EXACT_LOCK_OUTS:
            (repo / "outputs" / "notebooks").mkdir(parents=True, exist_ok=True)
            (repo / "outputs" / "notebooks" / f"{stage}.ipynb").write_bytes(regenerated)
        git(repo, "add", "dvc.lock", ".dvc")
        git(repo, "commit", "-q", "-m", "notebooks cached")
    return plant


VERSIONS = {"numpy": "2.0.2", "minigrid": "3.2.0", "gymnasium": "1.4.0"}


def test_exact_outputs_that_differ_name_the_package_versions_that_differ(repo, dvc_repo, capsys):
    dvc_repo(notebook(VERSIONS), notebook({**VERSIONS, "numpy": "2.1.0"}))
    edit(repo, "reports/metrics/dataset.json", lambda obj: obj.update(spearman=0.4))
    assert verify.main(["--root", str(repo)]) == 1
    captured = capsys.readouterr()
    assert "| DIFFERS | version | numpy | 2.0.2 | 2.1.0 | a cause to look at (recorded by dataset_card, " in captured.out
    assert "recorded versions differ: numpy 2.1.0 here, 2.0.2 in the committed run" in captured.err
    assert "minigrid" not in captured.out and "python" not in captured.err  # the same in both runs: not named


def test_a_python_or_a_package_only_one_run_had_is_named(repo, dvc_repo):
    dvc_repo(notebook(VERSIONS), notebook({**VERSIONS, "pillow": "12.0.0"}, python="3.12.1"))
    edit(repo, "reports/metrics/dataset.json", lambda obj: obj.update(spearman=0.4))
    report = verify.compare(repo)
    assert {(r.item, r.committed, r.regenerated) for r in report.versions} == {
        ("pillow", "(not installed)", "12.0.0"), ("python", "3.11.7", "3.12.1")}
    assert "python 3.12.1 here, 3.11.7 in the committed run" in report.verdict()


def test_the_same_versions_are_said_to_be_the_same(repo, dvc_repo):
    dvc_repo(notebook(VERSIONS), notebook(VERSIONS))
    edit(repo, "reports/metrics/dataset.json", lambda obj: obj.update(spearman=0.4))
    report = verify.compare(repo)
    assert not report.ok and report.versions == []
    assert report.verdict().endswith("; the two runs recorded the same package versions")


def test_versions_are_not_compared_when_exact_outputs_agree(repo, dvc_repo, capsys):
    dvc_repo(notebook(VERSIONS), notebook({**VERSIONS, "numpy": "2.1.0"}))
    assert verify.main(["--root", str(repo)]) == 0
    assert "version" not in capsys.readouterr().out.split("\n")[0] and verify.compare(repo).versions == []


def test_the_committed_records_are_read_from_the_default_remote(repo, dvc_repo):
    dvc_repo(notebook(VERSIONS), notebook({**VERSIONS, "numpy": "2.1.0"}), where="remote")
    edit(repo, "reports/metrics/dataset.json", lambda obj: obj.update(spearman=0.4))
    assert [(r.item, r.committed, r.regenerated) for r in verify.compare(repo).versions] == [("numpy", "2.0.2", "2.1.0")]


def test_records_in_no_cache_are_said_to_be_unavailable(repo, dvc_repo):
    dvc_repo(notebook(VERSIONS), notebook(VERSIONS))
    for cached in (repo / ".dvc" / "cache").rglob("*"):
        if cached.is_file():
            cached.unlink()
    edit(repo, "reports/metrics/dataset.json", lambda obj: obj.update(spearman=0.4))
    verdict = verify.compare(repo).verdict()
    assert "recorded versions not compared: outputs/notebooks/dataset_card.ipynb: object " in verdict
    assert "in neither the DVC cache nor the default remote" in verdict
