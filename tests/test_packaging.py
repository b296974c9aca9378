"""The project's packages import as themselves from any working directory (as Ray workers import them)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_packages_resolve_to_the_checkout_from_another_directory(tmp_path):
    # transferqueue ships a top-level recipe/ directory; the project's regular package must win over it.
    code = "import recipe, reward_server, data_prep; print(recipe.__file__, reward_server.__file__, data_prep.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    for path in done.stdout.split():
        assert Path(path).resolve().is_relative_to(ROOT)
