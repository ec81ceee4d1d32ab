"""The README is a short user document whose headline numbers come from the committed report
(``rgvlm.readme``), and every relative link of the README, the docs and the research log
resolves to a file (and a heading, where it names one) that exists."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from rgvlm import paths
from rgvlm.readme import END, START, headline_markdown, main, replace_block

ROOT = paths.ROOT
README = ROOT / "README.md"
LINKED_PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "research" / "README.md"]
MAX_README_LINES = 320


def _block(text: str) -> str:
    return text[text.index(START) + len(START) : text.index(END)].strip("\n")


def test_committed_headline_is_generated_from_the_committed_metrics():
    assert _block(README.read_text()) == headline_markdown(paths.METRICS, paths.PARAMS), (
        "README.md's headline block differs from reports/metrics/evaluation.json: run `make readme`"
    )


def test_headline_names_who_made_the_labels():
    block = headline_markdown(paths.METRICS, paths.PARAMS)
    assert "Labels by:" in block
    assert "reports/metrics/evaluation.json" in block


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; the user document keeps to {MAX_README_LINES}"


def test_missing_metrics_fail_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "evaluation.json"))):
        headline_markdown(tmp_path, paths.PARAMS)


def test_check_names_a_stale_block_and_rewrite_fixes_it(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nold numbers\n{END}\n\nafter\n")
    args = ["--readme", str(readme), "--metrics", str(paths.METRICS), "--params", str(paths.PARAMS)]
    assert main([*args, "--check"]) == 1
    assert "-old numbers" in capsys.readouterr().err
    assert main(args) == 0
    assert main([*args, "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n") and text.endswith(f"{END}\n\nafter\n")
    assert list(tmp_path.iterdir()) == [readme]  # the atomic write left no temporary


def test_block_markers_are_required(tmp_path):
    with pytest.raises(ValueError, match="headline:start"):
        replace_block("no block here", "x")
    shutil.copy(README, tmp_path / "README.md")  # the committed README has exactly one block
    assert replace_block((tmp_path / "README.md").read_text(), "x").count(START) == 1


# -- links ---------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link syntax and markup dropped, lower case, punctuation but
    ``-`` and ``_`` removed, spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose_lines(page.read_text()):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _relative_links(page: Path) -> list[str]:
    links = []
    for line in _prose_lines(page.read_text()):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                links.append(target)
    return links


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert page.is_file(), f"{page} is missing"
    broken = []
    for link in _relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: {target} does not exist")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_slug_follows_github():
    assert _slug("Chaining sub-tasks (the tenth round)") == "chaining-sub-tasks-the-tenth-round"
    assert _slug("Sweeps: DVC experiments") == "sweeps-dvc-experiments"
    assert _slug("Why completion stops near 0.3 (the third round)") == "why-completion-stops-near-03-the-third-round"
    assert _slug("Token-probability scoring (`labelling.scoring: token_probs`)") == (
        "token-probability-scoring-labellingscoring-token_probs"
    )
