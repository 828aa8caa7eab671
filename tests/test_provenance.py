"""Provenance: a checkout reports its commit, and so does a copy built from it (the fixed
installs long runs use), through the BUILD_COMMIT file setup.py writes at build time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smoothmix.provenance import BUILD_COMMIT, checkout_commit, git_commit

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_built_copy_reports_the_commit_it_was_built_from(tmp_path: Path) -> None:
    commit = checkout_commit(ROOT)
    if commit is None:
        pytest.skip("the tests do not run from a git checkout")
    assert git_commit() == commit  # this checkout, as an editable install sees it
    lib = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    assert (lib / "smoothmix" / BUILD_COMMIT).read_text().strip() == commit
    # The copy, imported from outside any checkout, reads the recorded commit.
    env = {**os.environ, "PYTHONPATH": str(lib)}
    code = "import smoothmix.provenance as p; print(p.provenance()['git_commit'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    assert out == commit
    # Without the record (a copy built from an archive), the commit is unknown, not guessed.
    (lib / "smoothmix" / BUILD_COMMIT).unlink()
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    assert out == "None"


def test_a_directory_that_is_not_a_checkout_has_no_commit(tmp_path: Path) -> None:
    assert checkout_commit(tmp_path) is None
