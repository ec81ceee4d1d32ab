"""Adding a reward method touches five files, and its ``label@<method>`` stage then runs with no
edit of dvc.yaml (docs/methods.md, "Adding a method"): in a clone of the tiny project, a throwaway
method that asks the (scripted) LVLM one question per episode is added as a user would add one --
its module, its prompt, its test, its params section and its registry entry -- then ``dvc repro
label@<method>`` runs it for real (DVC, papermill, the cached LVLM clients, the failure policy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.tiny_project import run, tiny_clone

NAME = "outcome"

#: The method's module: the interface of rgvlm.rewards.registry (config_from_params, label), built
#: on the shared toolkit (the prompt loader, the failure check, the provenance record).
MODULE = '''"""Outcome (a throwaway method of tests/test_add_method.py): asks once per episode whether the
agent completed its mission, and rewards the episode's last transition with ``success_reward`` on a
"yes"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgvlm import paths
from rgvlm.config import Config, param
from rgvlm.data.storage import OfflineDataset
from rgvlm.rewards.base import RewardResult, check_failure_rate
from rgvlm.rewards.queries import load_templates, provenance_record
from rgvlm.vlm.base import FailurePolicy, LVLMClient, LVLMRequest


@dataclass(frozen=True)
class OutcomeConfig(Config):
    """The ``outcome`` section."""

    SECTION = "outcome"
    success_reward: float = param(1.0, low=0.0)
    prompt_dir: str = param(str(paths.PROMPTS), internal=True)


def config_from_params(raw: Any) -> OutcomeConfig:
    return OutcomeConfig.from_section(raw)


@dataclass(frozen=True)
class EpisodeOutcome:
    """The scripted annotator's ground truth of one question."""

    succeeded: bool

    def scripted_answer(self, rng: np.random.Generator, noise: Any) -> str:
        return "yes" if self.succeeded else "no"


def label(dataset: OfflineDataset, clients: tuple[LVLMClient, LVLMClient], config: OutcomeConfig, out_dir: Path,
          failure_policy: FailurePolicy | None = None) -> tuple[RewardResult, dict[str, Any]]:
    (template,) = load_templates("outcome", config.prompt_dir)
    requests = [LVLMRequest(prompt=template.format(mission=e["mission"], episode=i), max_new_tokens=4,
                            annotation=EpisodeOutcome(bool(e["success"])))
                for i, e in enumerate(dataset.episodes)]
    answers = [a.text.strip().lower() for a in clients[0].generate(requests)]
    unparsed = sum(a not in ("yes", "no") for a in answers)
    check_failure_rate("outcome", unparsed, len(answers), {"not yes or no": unparsed}, failure_policy, "episodes")
    rewards = np.zeros(dataset.num_transitions, dtype=np.float32)
    for episode, answer in zip(dataset.episodes, answers, strict=True):
        if answer == "yes":
            rewards[episode["step_start"] + episode["length"] - 1] = config.success_reward
    stats = {"episodes": len(answers), "yes": answers.count("yes")}
    provenance = provenance_record("outcome", "one yes/no question per episode", config, clients[0])
    return RewardResult("outcome", rewards, provenance=provenance, cost=dict(stats)), stats
'''

PROMPT = "Episode {episode}. The mission was: {mission}. Did the agent complete it? Answer yes or no.\n"

#: The method's own test, run in the clone.
TEST = '''import pytest

from rgvlm.methods.outcome import EpisodeOutcome, config_from_params
from rgvlm.params import ParamError


def test_outcome_config_and_answers():
    assert config_from_params({"success_reward": 2}).success_reward == 2.0
    with pytest.raises(ParamError, match="outcome.success_reward"):
        config_from_params({"success_reward": -1})
    assert EpisodeOutcome(True).scripted_answer(None, None) == "yes"
'''

#: The registry entry, added after the last one.
ENTRY = (f'    "{NAME}": {{"module": "rgvlm.methods.{NAME}", "backend": "labelling", '
         f'"prompts": ["{NAME}.txt"], "queries": ["rgvlm.methods.{NAME}.EpisodeOutcome"]}},\n')


@pytest.mark.slow
def test_a_new_method_touches_five_files_and_its_label_stage_runs(tmp_path):
    root = tmp_path / "rgvlm"
    root.mkdir()
    env = tiny_clone(root)
    run(["git", "add", "-A"], root, env)  # the project as its user has it (data.dvc of the built data/)
    run(["git", "commit", "-qm", "data built"], root, env)
    stages_before = run(["dvc", "stage", "list", "--name-only"], root, env).stdout.split()

    (root / "rgvlm" / "methods" / f"{NAME}.py").write_text(MODULE)
    (root / "prompts" / f"{NAME}.txt").write_text(PROMPT)
    (root / "tests" / f"test_{NAME}.py").write_text(TEST)
    params = root / "params.yaml"
    params.write_text(params.read_text() + f"{NAME}:\n  success_reward: 2.0\n")
    registry = root / "rgvlm" / "rewards" / "registry.py"
    last = '    "embedding": {"module": "rgvlm.methods.embedding", "backend": "embedding"},\n'
    assert registry.read_text().count(last) == 1, "the registry's last entry moved: update this test's anchor"
    registry.write_text(registry.read_text().replace(last, last + ENTRY))

    status = run(["git", "status", "--porcelain", "--untracked-files=all"], root, env).stdout.splitlines()
    assert sorted(line[3:] for line in status) == sorted([
        f"rgvlm/methods/{NAME}.py", f"prompts/{NAME}.txt", f"tests/test_{NAME}.py", "params.yaml",
        "rgvlm/rewards/registry.py"])  # five files: dvc.yaml is not among them

    stages = run(["dvc", "stage", "list", "--name-only"], root, env).stdout.split()
    assert stages == [*stages_before[:stages_before.index("rewards")], f"label@{NAME}", *stages_before[
        stages_before.index("rewards"):]]  # the stage follows from the entry, after the other methods'
    assert "every stage's deps cover" in run(["python", "-m", "tools.dvc_deps"], root, env).stdout
    run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/test_{NAME}.py"], root, env)

    lock_file = root / "dvc.lock"  # the committed run's, for the default profile, if there is one
    before = yaml.safe_load(lock_file.read_text())["stages"] if lock_file.exists() else {}
    run(["dvc", "repro", f"label@{NAME}"], root, env)
    lock = yaml.safe_load(lock_file.read_text())["stages"]
    # It ran, alone (data/ is committed, nothing upstream): only its own entry is new.
    assert set(lock) - set(before) == {f"label@{NAME}"}
    assert all(lock[name] == entry for name, entry in before.items())
    assert lock[f"label@{NAME}"]["params"]["params.yaml"][NAME] == {"success_reward": 2.0}
    assert "up to date" in run(["dvc", "status", f"label@{NAME}"], root, env).stdout

    from rgvlm.data.storage import load_dataset

    dataset = load_dataset(root / "data")
    rewards = np.load(root / "outputs" / "labels" / NAME / f"{NAME}.npy")
    expected = np.zeros(dataset.num_transitions, dtype=np.float32)
    for episode in dataset.episodes:  # the scripted annotator answers from the ground truth
        if episode["success"]:
            expected[episode["step_start"] + episode["length"] - 1] = 2.0
    np.testing.assert_array_equal(rewards, expected)
    metrics = json.loads((root / "reports" / "metrics" / f"labelling_{NAME}.json").read_text())
    assert metrics["cost"]["episodes"] == len(dataset.episodes) == metrics["cost"]["lvlm_calls"]
    assert metrics["provenance"]["lvlm"]["backend"] == "scripted"
    assert (root / "reports" / "notebooks" / f"02_label_{NAME}.html").is_file()
