"""The manual: ``make docs`` builds it strictly, and the build fails on a broken link, a page missing from the
nav, and a name of a repository file or module that does not exist (each shown on a copy of the manual)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))

from file_references import unresolved  # noqa: E402

pytestmark = pytest.mark.slow


def test_make_docs_builds_every_page_strictly(tmp_path):
    built = subprocess.run(["make", "docs", f"SITE_DIR={tmp_path / 'site'}"], cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    pages = sorted(path.stem for path in (ROOT / "docs").glob("*.md"))
    for page in pages:
        built_page = tmp_path / "site" / ("index.html" if page == "index" else f"{page}/index.html")
        assert built_page.is_file(), page


@pytest.fixture
def manual(tmp_path):
    """A copy of the manual beside links to the repository's folders, and a function that builds it."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    for folder in ("recipe", "reward_server", "data_prep", "conf", "tests", "bench"):
        (tmp_path / folder).symlink_to(ROOT / folder)

    def build():
        command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml")]
        return subprocess.run([*command, "-d", str(tmp_path / "site")], capture_output=True, text=True)

    return tmp_path, build


def test_the_copy_builds_before_it_is_broken(manual):
    _, build = manual
    assert build().returncode == 0


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("See [the data page](data-prep.md).", "data-prep.md"),
        ("The reward lives in `recipe/samr1/rewards.py`.", "recipe/samr1/rewards.py"),
        ("The metrics are `recipe.task.scores.SegMetrics`.", "recipe.task.scores.SegMetrics"),
    ],
)
def test_a_broken_link_or_a_missing_file_fails_the_build(manual, breakage, message):
    root, build = manual
    page = root / "docs" / "data.md"
    page.write_text(page.read_text() + f"\n{breakage}\n")
    result = build()
    assert result.returncode != 0 and message in result.stdout + result.stderr


def test_a_nav_entry_without_its_page_fails_the_build(manual):
    root, build = manual
    (root / "docs" / "costs.md").unlink()
    result = build()
    assert result.returncode != 0 and "costs.md" in result.stdout + result.stderr


def test_names_that_resolve_are_not_reported():
    text = "`recipe/task/answer.py`, `conf/ablation/`, `recipe.task.metrics.SegMetrics`, `recipe.evaluate`, "
    text += (
        "`outputs/smoke/<recipe>/run/`, `data/eval/x.parquet`, `make docs`, `recipe.verl_runtime.preflight.host_checks`"
    )
    assert unresolved(text) == []
    assert unresolved("`recipe.verl_runtime.preflight.nothing_here`") == ["recipe.verl_runtime.preflight.nothing_here"]
    assert unresolved("```\nrecipe/absent.py\n```\n`recipe/absent.py`") == ["recipe/absent.py"]
