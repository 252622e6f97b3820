"""How the package is declared and installed: the version written once, and an
editable install (the README's ``pip install -e .``) that a type checker can read."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import async_tasks

ROOT = Path(__file__).resolve().parent.parent
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def test_the_version_is_written_once_in_the_package() -> None:
    """pyproject.toml reads the version from `async_tasks.__version__`; the installed metadata agrees."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert importlib.metadata.version("async-tasks") == async_tasks.__version__


@pytest.mark.e2e
def test_mypy_in_a_users_own_folder_finds_the_package_and_reports_only_the_params_typo(tmp_path: Path) -> None:
    """The README's executor, copied into a folder of the user's own with a typo in a params
    field: ``mypy --strict`` there sees the installed package and reports that typo, nothing else."""
    example = PYTHON_BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))[0]
    assert "task.params.who}" in example, "the README's first Python example reads task.params.who"
    (tmp_path / "greet_ok.py").write_text(example, encoding="utf-8")
    (tmp_path / "greet_typo.py").write_text(example.replace("task.params.who}", "task.params.whom}"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    cache = tmp_path / "cache"
    if (ROOT / ".mypy_cache").is_dir():
        # A copy of the project's own cache (scripts/test.sh type-checks before the tests):
        # mypy still has to find the package from this folder, but not read it and its
        # libraries again (3 s of CPU).
        shutil.copytree(ROOT / ".mypy_cache", cache)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), "."],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, out.stdout + out.stderr
    assert errors[0].startswith("greet_typo.py:") and '"GreetParams" has no attribute "whom"' in errors[0]
