"""The repository cites only what it contains: ``docs/conventions.md`` by section, or a paper by name.

A citation of the project's specification by section number, or a path outside the repository (the sibling
``shared`` folder the specification and the papers were kept in while the project was written), means nothing to
someone who has only the repository. Product code, tests, configs and the Markdown docs are read as text; nothing
is imported.

Reference: the issue's rule that docstrings and docs point to ``docs/conventions.md`` (sections: Spaces and
coordinates, SAM2 prompts, Prompts, Parsing, Rewards, Edge-excluded IoU, Evaluation metrics, Optimisation and data)
or to the paper by name.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("recipe", "reward_server", "data_prep", "bench", "tests", "conf", "docs")
TOP_LEVEL = ("README.md", "Makefile", "pyproject.toml")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh"}

# Neither pattern matches its own source text here, so this file is checked like any other.
FORBIDDEN = {
    "the specification (cite docs/conventions.md by section, or a paper by name)": re.compile(r"\bSPEC\b"),
    "a path outside the repository": re.compile(r"\.\./+shared\b|/work/+shared\b"),
}


def checked_files(root: Path) -> list[Path]:
    """The product code, tests, configs and docs under ``root``; caches and build outputs are not read."""
    files = [root / name for name in TOP_LEVEL if (root / name).is_file()]
    for folder in FOLDERS:
        files += [
            path
            for path in sorted((root / folder).rglob("*"))
            if path.suffix in SUFFIXES and path.is_file() and "__pycache__" not in path.parts
        ]
    return files


def citations(root: Path) -> list[str]:
    """``path:line: what it cites: the line`` for every forbidden citation in :func:`checked_files`."""
    found = []
    for path in checked_files(root):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(root)}:{number}: {what}: {line.strip()}")
    return found


def test_there_are_files_to_check():
    checked = {path.relative_to(ROOT).as_posix() for path in checked_files(ROOT)}
    assert {"README.md", "docs/conventions.md", "conf/samr1.yaml", "recipe/verl_runtime/registration.py"} <= checked
    assert "tests/test_doc_references.py" in checked, "this file is checked too"


def test_nothing_cites_the_specification_or_a_path_outside_the_repository():
    found = citations(ROOT)
    assert found == [], "\n".join(found)


# Split so that this file's own source holds none of them.
@pytest.mark.parametrize(
    "line",
    [
        "(``x * W / 840``, ``y * H / 840``, SP" + "EC section 1)",
        '"""The SAM-Veteran Hydra config (SP' + 'EC section 7) and its ablation presets."""',
        "See SP" + "EC.md for the rules.",
        "the paper's prompt (../sha" + "red/papers/sam_veteran.pdf)",
        "data: ../../sha" + "red/data",
        "root: /work/sha" + "red/checkpoints",
    ],
)
def test_a_citation_is_found(tmp_path, line):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text(f"# Notes\n\n{line}\n")
    [found] = citations(tmp_path)
    assert found.startswith("docs/notes.md:3: ") and found.endswith(line)


@pytest.mark.parametrize(
    "line",
    [
        "SAM-R1 section 3.3: SAM2 gets the box and the reference point (docs/conventions.md, Rewards).",
        "QWEN2_5_SPECIAL_TOKENS = ()",
        '@hydra.main(version_base=None, config_path="../../conf", config_name="samr1")',
        "the shared workflow driver, shared by both recipes",
    ],
)
def test_what_the_repository_may_say_is_not_a_citation(tmp_path, line):
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "module.py").write_text(f"{line}\n")
    assert citations(tmp_path) == []
