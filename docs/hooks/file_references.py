"""A mkdocs hook: every repository path or module a page names in code spans must exist.

mkdocs checks links between pages; the manual also names files (``recipe/task/answer.py``, ``conf/ablation/``) and
modules (``recipe.task.metrics.SegMetrics``) in code spans. A name that does not resolve is logged as a warning,
which ``mkdocs build --strict`` (``make docs``) turns into a failed build, so a moved or renamed file cannot leave the
manual pointing at nothing.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

LOG = logging.getLogger("mkdocs.plugins.file_references")
ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("recipe", "reward_server", "data_prep", "conf", "docs", "tests", "bench")
"""The repository's folders; names under other roots (``data/``, ``outputs/``) are what commands write."""
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
PATH = re.compile(r"^(?:" + "|".join(TOP_LEVEL) + r")/[\w./+-]*$")
MODULE = re.compile(r"^(?:recipe|reward_server|data_prep)(?:\.\w+)+$")


def missing_path(name: str) -> bool:
    """Whether a path of the repository (a file or folder, ``:line`` and a trailing ``/`` allowed) is absent."""
    return not (ROOT / name.split(":")[0].rstrip("/")).exists()


def missing_module(name: str) -> bool:
    """Whether a dotted name fails to resolve: its leading parts must name packages, until one names a module file
    (the rest are that module's attributes, not checked here) or an attribute of the package."""
    path = ROOT
    for part in name.split("."):
        if (path / f"{part}.py").is_file():
            return False
        if not (path / part).is_dir():
            # A package's own attribute (defined or imported in its __init__.py) resolves too.
            init = path / "__init__.py"
            return not (init.is_file() and re.search(rf"\b{re.escape(part)}\b", init.read_text()))
        path = path / part
    return False


def unresolved(markdown: str) -> list[str]:
    """The code-span names of ``markdown`` (outside fenced blocks) that name a missing path or module."""
    found, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for name in CODE_SPAN.findall(line):
            name = name.strip()
            if (PATH.match(name) and missing_path(name)) or (MODULE.match(name) and missing_module(name)):
                found.append(name)
    return found


def on_page_markdown(markdown: str, page, config, files) -> str:
    for name in unresolved(markdown):
        LOG.warning("%s names %s, which does not exist in the repository", page.file.src_uri, name)
    return markdown
