"""Which smoothmix wrote a file: the release and, for a git checkout, the commit.

Every settings record (result files, targets files, checkpoints, reproduce folders) carries
this, so a number can be traced to the code that produced it.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from smoothmix import __version__


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout smoothmix runs from (an editable install), with ``+dirty``
    when it has uncommitted changes; None for an installed copy or without git."""
    here = Path(__file__).resolve().parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(here), *args], capture_output=True,
                                  text=True, timeout=5, check=True).stdout.strip()

        top = Path(git("rev-parse", "--show-toplevel"))
        if not (top / "src" / "smoothmix").resolve() == here:
            return None  # some other repository happens to contain the installed copy
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "src"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def provenance() -> dict[str, str | None]:
    """``{"smoothmix": version, "git_commit": commit or None}``."""
    return {"smoothmix": __version__, "git_commit": git_commit()}
