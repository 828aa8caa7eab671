"""scripts/fixed-installs: each install is a clone checked out at its own commit, installed
(with the diffusion extra for certification) into its own venv, and kept when a rerun finds
it built; it prints the environment scripts/full-budget-plan takes. A stand-in Python makes
venvs whose pip logs its command line, so no package is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# `python -m venv DIR` makes DIR/bin/pip, which logs its arguments and, on install, records
# the commit of the source folder it was given (the extra stripped); DIR/bin/python -c
# prints that commit, as smoothmix.provenance does for a real install.
FAKE_PYTHON = r"""#!/usr/bin/env bash
[ "$1 $2" = "-m venv" ] || exit 1
mkdir -p "$3/bin"
cat > "$3/bin/pip" <<EOF
#!/usr/bin/env bash
echo "pip \$*" >> "$LOG"
if [ "\$1" = install ]; then src="\${!#}"; git -C "\${src%%[*}" rev-parse HEAD > "$3/commit"; fi
if [ "\$1" = freeze ]; then echo "smoothmix==0.0"; fi
EOF
cat > "$3/bin/python" <<EOF
#!/usr/bin/env bash
cat "$3/commit"
EOF
chmod +x "$3/bin/pip" "$3/bin/python"
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_builds_each_install_at_its_commit_once(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "fixed-installs", repo / "scripts" / "fixed-installs")
    git(repo, "init", "-q")
    commits = []
    for n in (1, 2):
        (repo / "version").write_text(str(n))
        git(repo, "add", "-A")
        git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", str(n))
        commits.append(git(repo, "rev-parse", "HEAD"))
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "pip.log"
    env = {**os.environ, "PYTHON": str(fake), "LOG": str(log),
           "TRAIN_COMMIT": commits[0][:7], "CERTIFY_COMMIT": commits[1][:7]}
    script, out = str(repo / "scripts" / "fixed-installs"), tmp_path / "installs"

    run = subprocess.run(["bash", script, str(out)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (f"TRAIN_ENV={out}/train/venv "
                                  f"CERTIFY_ENV={out}/certify/venv")
    assert git(out / "train" / "src", "rev-parse", "HEAD") == commits[0]
    assert git(out / "certify" / "src", "rev-parse", "HEAD") == commits[1]
    assert log.read_text().splitlines() == [
        f"pip install -q torch==2.14.1 torchvision==0.29.1 {out}/train/src",
        "pip freeze",
        f"pip install -q torch==2.14.1 torchvision==0.29.1 {out}/certify/src[diffusion]",
        "pip freeze",
    ]
    assert (out / "certify" / "freeze.txt").read_text() == "smoothmix==0.0\n"

    # A rerun finds both installs at their commits and builds nothing.
    again = subprocess.run(["bash", script, str(out)], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == run.stdout
    assert again.stderr.count("already holds") == 2 and len(log.read_text().splitlines()) == 4

    # An install at another commit is rebuilt; a commit the repository lacks is refused.
    (out / "certify" / "venv" / "commit").write_text(commits[0])
    subprocess.run(["bash", script, str(out)], env=env, check=True, capture_output=True)
    assert git(out / "certify" / "src", "rev-parse", "HEAD") == commits[1]
    assert len(log.read_text().splitlines()) == 6
    bad = subprocess.run(["bash", script, str(out)], capture_output=True, text=True,
                         env={**env, "CERTIFY_COMMIT": "0123abc"})
    assert bad.returncode == 2 and "commit 0123abc is not in" in bad.stderr
    usage = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
