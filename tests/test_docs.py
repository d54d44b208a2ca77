"""The documentation stays true: the generated config reference is current, every study config field
is described, the README stays short, and every relative link in README.md and docs/ resolves."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 200

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", DOCS / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_config_reference_is_generated_from_the_current_models(generator) -> None:
    written = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert written == generator.render(), (
        "docs/config-reference.md is out of date: run python docs/gen_config_reference.py"
    )


def test_every_field_of_the_study_config_has_a_description(generator) -> None:
    tree = generator.model_tree(generator.study_root())
    names = {model.__name__ for model in tree}
    assert {"StudyConfig", "Recipe", "FinderEntry", "TrainingConfig", "SGDConfig"} <= names
    assert generator.missing_descriptions() == []


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def relative_links(markdown: str) -> list[str]:
    """Link targets outside code, without URLs, mail addresses and in-page anchors."""
    text = INLINE_CODE.sub("", FENCE.sub("", markdown))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_relative_links_find_their_files() -> None:
    pages = [README, *sorted(DOCS.glob("*.md"))]
    assert len(pages) > 5
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in pages
        for target in relative_links(page.read_text(encoding="utf-8"))
        if not (page.parent / target).exists()
    ]
    assert broken == []


def imp_snippet(markdown: str) -> str:
    section = markdown.split("IMP on your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_docs_carry_the_readmes_tested_imp_snippet() -> None:
    """tests/pruning/test_imp.py runs the README's copy; the site's copy must be the same code."""
    readme = imp_snippet(README.read_text(encoding="utf-8"))
    assert imp_snippet((DOCS / "masks.md").read_text(encoding="utf-8")) == readme


def test_the_link_finder_sees_links_and_skips_code() -> None:
    text = "[a](x.md) [b](docs/y.md#part) [c](https://e.org) [d](#here)\n`[e](no.md)`\n```\n[f](no.md)\n```\n"
    assert relative_links(text) == ["x.md", "docs/y.md"]


@pytest.mark.slow
def test_the_docs_site_builds_strictly(tmp_path) -> None:
    """``mkdocs build --strict``: a broken link, a page missing from the nav or a bad anchor fails."""
    import subprocess
    import sys

    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (
        tmp_path / "site" / "status" / "index.html"
    ).is_file()
