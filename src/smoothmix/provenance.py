"""Which smoothmix wrote a file: the release and the commit of its code.

Every settings record (result files, targets files, checkpoints, reproduce folders) carries
this, so a number can be traced to the code that produced it. A git checkout (an editable
install) reports its commit; an installed copy (``pip install .``, the fixed install that
long runs use) reports the commit it was built from, which ``setup.py`` records in
``smoothmix/BUILD_COMMIT`` at build time.

This module imports nothing from smoothmix at the top: ``setup.py`` loads it on its own.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["BUILD_COMMIT", "checkout_commit", "git_commit", "provenance"]

BUILD_COMMIT = "BUILD_COMMIT"


def checkout_commit(root: Path) -> str | None:
    """The commit of the git checkout whose top level is ``root`` (with ``+dirty`` when
    ``src`` has uncommitted changes); None if ``root`` is not one or git is missing."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=5, check=True).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return None  # some other repository happens to contain root
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "src"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


@functools.cache
def git_commit() -> str | None:
    """The commit smoothmix runs from: the checkout's (editable install), else the one an
    installed copy was built from; None when neither is known (e.g. built from an archive)."""
    here = Path(__file__).resolve().parent
    if here.parent.name == "src":
        commit = checkout_commit(here.parent.parent)
        if commit is not None:
            return commit
    recorded = here / BUILD_COMMIT
    if recorded.is_file():
        return recorded.read_text("utf-8").strip() or None
    return None


def provenance() -> dict[str, str | None]:
    """``{"smoothmix": version, "git_commit": commit or None}``."""
    from smoothmix import __version__

    return {"smoothmix": __version__, "git_commit": git_commit()}
