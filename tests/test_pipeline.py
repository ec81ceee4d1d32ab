"""The real pipeline on the tiny profile: `dvc repro` of real papermill notebooks in a
temporary clone, then no-op repro, selective rerun, bad parameters and a DVC remote round trip."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rgvlm.evaluation import paired_differences, records_from_per_layout, summarize
from rgvlm.rewards.registry import LABELLED_METHODS as LABELLED
from rgvlm.rewards.registry import METHODS
from tests.report_pages import assert_same_report
from tests.tiny_project import default_status, run, tiny_params


def _tiny_run_counts() -> tuple[int, int]:
    """(trained runs, evaluation episodes of one policy per run) of the tiny profile, from the
    profile itself, so that a method added to its train section needs no edit here."""
    from rgvlm.params import train_config

    profile = tiny_params()  # the overlay merged onto params.yaml
    train = train_config(profile["train"])
    evaluation = profile["evaluation"]
    episodes = len(evaluation["ks"]) * sum(evaluation["episodes_per_k"][split] for split in evaluation["splits"])
    return sum(len(train.seeds_for(name)) for name in train.trained), episodes


RUNS, EPISODES_PER_RUN = _tiny_run_counts()

STAGES = ("dataset_card", *(f"label@{m}" for m in LABELLED), "rewards", "train", "peer", "evaluate", "report")
NOTEBOOKS = ("01_dataset_card", *(f"02_label_{m}" for m in LABELLED), "03_rewards", "04_train", "04b_peer",
             "05_evaluate", "06_report")
pytestmark = pytest.mark.slow


def tree_digest(*folders: Path) -> dict[str, str]:
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def project(tiny_pipeline):
    """The tiny-profile clone after its first `dvc repro` (tests/conftest.py)."""
    return tiny_pipeline


def test_repro_runs_every_stage_and_writes_the_report(project):
    dst, _, repro = project
    for stage in STAGES:
        assert f"Running stage '{stage}'" in repro.stdout
    for name in NOTEBOOKS:
        assert (dst / "reports" / "notebooks" / f"{name}.html").stat().st_size > 10_000
    for figure in ("fig4_left.png", "fig4_left_greedy.png", "fig4_right.png", "generalisation.png",
                   "success_by_k.png", "training_curves.png", "critic_diagnostic.png", "label_quality.png",
                   "paired_differences.png"):
        assert (dst / "reports" / "figures" / figure).read_bytes()[:4] == b"\x89PNG"
    evaluation = json.loads((dst / "reports" / "metrics" / "evaluation.json").read_text())
    reward_sets = {row["reward_set"] for row in evaluation["summary"]}
    baselines = {"bc", "bc_success", "d3rlpy_bc", "d3rlpy_cql"}
    assert reward_sets == {"sparse", "oracle", "sparse+rg_vlm@0.5", *LABELLED, *baselines}
    assert {row["k"] for row in evaluation["summary"]} == {1, 2}
    assert {row["split"] for row in evaluation["summary"]} == {"seen", "fresh"}
    assert {row["policy"] for row in evaluation["summary"]} == {"greedy", "sampled"}
    for row in evaluation["summary"]:  # sparse and oracle have an extra seed; 1 seen and 2 fresh episodes per k
        seeds = 2 if row["reward_set"] in ("sparse", "oracle") else 1
        assert row["num_seeds"] == seeds and row["num_episodes"] == seeds * {"seen": 1, "fresh": 2}[row["split"]], row
    assert set(evaluation["provenance"]["baselines"]) == baselines
    index = (dst / "reports" / "index.html").read_text()
    assert "scripted annotator" in index.split("</title>")[0]  # never presented as an LVLM
    for method in LABELLED:
        labelling = json.loads((dst / "reports" / "metrics" / f"labelling_{method}.json").read_text())
        if not METHODS[method].uses_lvlm:  # an embedding model
            assert labelling["cost"]["lvlm_calls"] == 0
            continue
        assert labelling["provenance"]["lvlm"]["backend"] == "scripted" and labelling["cost"]["lvlm_calls"] > 0, method
    assert "Labelling cost per method" in index and "Does the paper" in index
    # The same report in Markdown, for a repository browser: the same text, tables and figures.
    assert_same_report(index, (dst / "reports" / "README.md").read_text())
    quality = json.loads((dst / "reports" / "metrics" / "label_quality.json").read_text())
    assert quality["oracle"]["auroc_completion"] == 1.0 and 0.5 < quality["rg_vlm"]["auroc_completion"] <= 1.0
    assert set(LABELLED) <= set(quality)
    # Paired statistics (issue 30): intervals over seeds x layouts, recomputable from the committed
    # per-layout table; the claims decided with Holm over the stated family; every figure captioned.
    assert {row["interval"] for row in evaluation["summary"]} == {"seeds x layouts"}
    per_layout = pd.read_csv(dst / "reports" / "metrics" / "per_layout.csv")
    assert len(per_layout) == 2 * len(reward_sets) * EPISODES_PER_RUN  # policies x rows x (k, layout) cells
    cells = records_from_per_layout(per_layout)
    assert summarize(cells, 200, 0).to_dict("records") == evaluation["summary"]
    paired = pd.DataFrame(evaluation["paired"])
    assert paired_differences(cells, 200, 0).to_dict("records") == evaluation["paired"]
    assert {("oracle", "sparse"), ("oracle", "bc"), ("sparse+rg_vlm@0.5", "rg_vlm")} <= set(
        zip(paired["row"], paired["reference"], strict=True))
    family = paired[(paired["policy"] == "sampled") & (paired["split"] == "fresh")]
    assert f"({len(family)} tests)" in index and "Holm" in index and "reset seeds 2,000,000,000 to 2,000,000,001" in index
    assert index.count("<figure>") == index.count("<figcaption>") and "<figcaption>fig4_left.png" not in index
    assert index.index("<figure>") > index.index("<p>IQL and the baselines")  # text before the first figure
    # Where the policies stop (issue 29): success once reached, per kind and per position, in the report.
    by_position = pd.DataFrame(evaluation["chaining"]["by_position"])
    # A row appears at a position once some episode reached it: the first position always is.
    assert 1 in set(by_position["position"]) <= {1, 2} and set(by_position["reward_set"]) == reward_sets
    assert "Where the policies stop (sampled policy, fresh split)" in index and "2 x 2 rooms, room size" in index
    first = evaluation["summary"][0]
    assert f"{first['completion_mean']:.3f} [{first['completion_low']:.3f}, {first['completion_high']:.3f}]" in index
    card = json.loads((dst / "reports" / "metrics" / "dataset.json").read_text())
    assert card["episodes"] == 12 and [row["k"] for row in card["per_k"]] == [1, 2]
    log = (dst / "reports" / "metrics" / "training.csv").read_text().splitlines()
    assert log[0].startswith("reward_set,seed,step") and len(log) == 1 + RUNS * 4  # runs x (40 / 10) rows
    assert "v_return_corr" in log[0] and "Did each critic learn?" in index
    checkpoints = json.loads((dst / "reports" / "metrics" / "checkpoints.json").read_text())
    assert [c["step"] for c in checkpoints["stack_checkpoints"]] == [20] and checkpoints["export_files"] == RUNS
    assert f"checkpoints: 1 stack checkpoint of {RUNS} runs" in (dst / "reports" / "notebooks" / "04_train.html").read_text()


def test_repro_shows_progress_in_the_terminal(project):
    """Each long loop's final line (rgvlm.progress) reaches `dvc repro`'s stderr, stage by stage."""
    _, _, repro = project
    for line in ("[label@rg_vlm] LVLM scripted-annotator: ", "[label@erl_vlm] LVLM scripted-annotator: ",
                 f"[train] IQL updates, {RUNS} runs in one stack: 40/40 updates (100%), ",
                 "[peer] d3rlpy DiscreteCQL seed 0: 20/20 updates (100%), ",
                 f"[evaluate] evaluation rollouts, {RUNS} runs x 2 policies: {2 * RUNS * EPISODES_PER_RUN}/"
                 f"{2 * RUNS * EPISODES_PER_RUN} episodes (100%), "):
        assert line in repro.stderr, (line, repro.stderr[-3000:])


def test_second_repro_does_nothing(project):
    dst, env, _ = project
    again = run(["dvc", "repro"], dst, env)
    assert "Running stage" not in again.stdout
    assert "up to date" in default_status(dst, env)


def test_bad_parameter_fails_before_the_kernel_starts(project):
    dst, env, _ = project
    bad = yaml.safe_load((dst / "params.yaml").read_text())
    bad["evaluation"]["ks"] = [1, 9]
    params_file = dst / "bad-params.yaml"
    params_file.write_text(yaml.safe_dump(bad))
    result = run([sys.executable, "-m", "rgvlm.pipeline", "evaluate", "--params", str(params_file)], dst, env, check=False)
    assert result.returncode == 2
    assert "evaluation.ks[1]=9" in result.stderr and "1..6" in result.stderr
    assert "Executing" not in result.stderr


def test_dvc_remote_round_trip_is_bit_identical(project, tmp_path):
    dst, env, _ = project
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], dst, env)
    try:
        run(["dvc", "push", "-q"], dst, env)
        before = tree_digest(dst / "data", dst / "outputs")
        assert all(any(f"/outputs/{folder}/" in name for name in before) for folder in ("models", "rewards", "labels/vlm_car", "lvlm_cache/erl_vlm"))
        for folder in ("data", "outputs", ".dvc/cache"):
            shutil.rmtree(dst / folder)
        # --allow-missing: the optional noise sweep (optional/dvc.yaml) has never run here, so its outputs are
        # in no cache; what the default pipeline made must all come back (checked just below).
        run(["dvc", "pull", "-q", "--allow-missing"], dst, env)
        assert tree_digest(dst / "data", dst / "outputs") == before
        assert "up to date" in default_status(dst, env)
    finally:
        run(["dvc", "remote", "remove", "shared"], dst, env)


def test_training_param_change_reruns_training_and_what_follows_only(project):
    dst, env, _ = project
    original = (dst / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["train"]["num_steps"] = 50
    (dst / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        changed = run(["dvc", "repro"], dst, env).stdout
    finally:
        (dst / "params.yaml").write_text(original)
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in changed}
    assert ran == {"train", "evaluate", "report"}
    # Back to the original parameters: the runs trained longer are retrained, not reused.
    run(["dvc", "repro"], dst, env)
    log = json.loads((dst / "outputs" / "models" / "sparse" / "seed0.log.json").read_text())
    assert log[-1]["step"] == 40


def test_cached_relabel_asks_no_lvlm(project):
    """Rerunning the labelling stage from scratch answers everything from the response cache."""
    dst, env, _ = project
    for method in (m for m in LABELLED if METHODS[m].uses_lvlm):
        run(["dvc", "repro", "--force", "--single-item", f"label@{method}"], dst, env)
        labelling = json.loads((dst / "reports" / "metrics" / f"labelling_{method}.json").read_text())
        assert labelling["cost"]["lvlm_calls"] == 0 and labelling["cost"]["cache_hits"] > 0, method


def ran_stages(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


def test_a_method_params_change_reruns_that_method_labelling_and_what_follows_only(project):
    """Each label@<method> stage declares only its own section (and the shared LVLM backend):
    changing one method's section reruns that method's labelling and the stages after it, never
    the other methods' labelling."""
    dst, env, _ = project
    run(["dvc", "repro"], dst, env)  # up to date whatever the tests before left
    original = (dst / "params.yaml").read_text()

    def repro_with(section: str, key: str, value, *args: str) -> str:
        params = yaml.safe_load(original)
        params[section] = {**params[section], key: value}
        (dst / "params.yaml").write_text(yaml.safe_dump(params))
        return run(["dvc", "repro", *args], dst, env).stdout

    try:
        # dry runs: which labelling stages a change reaches (a dry run does not follow the chain)
        assert ran_stages(repro_with("rg_vlm", "window_length", 4, "--dry")) == {"label@rg_vlm"}
        lvlm = {f"label@{m}" for m in LABELLED if METHODS[m].uses_lvlm}
        assert ran_stages(repro_with("labelling", "max_failure_rate", 0.5, "--dry")) == lvlm
        # a real run: ERL-VLM's labelling, and every stage that follows from its labels
        changed = repro_with("erl_vlm", "train_steps", 3)
    finally:
        (dst / "params.yaml").write_text(original)
    assert ran_stages(changed) == {"label@erl_vlm", "rewards", "train", "peer", "evaluate", "report"}
    run(["dvc", "repro"], dst, env)  # back to the profile's labels
    assert "up to date" in default_status(dst, env)
