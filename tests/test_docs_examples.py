"""Every code example of README.md and docs/*.md runs as shown.

- ```` ```python ```` blocks: the blocks of one file run in order, in one namespace, in a
  fresh Python process whose working directory is an empty temporary folder (so a block may
  use what an earlier block of the same page defined or wrote, and nothing else). The
  checkout's ``src/`` is imported. Write examples with small counts, so that what runs is
  what is shown.
- ```` ```bash ```` blocks: every command that starts with ``smoothmix`` (also after ``&&``
  or ``;``, and ``torchrun ... -m smoothmix``) is parsed by the CLI's own parser: the
  subcommand, every flag and every choice must exist, and no deprecated spelling is used.
  Nothing is run.
- docs/DESIGN.md is exempt: its ``python`` blocks are interface sketches for contributors
  (signatures without bodies), not examples.
- The one override: the line ``<!-- docs-test: skip (REASON) -->`` right before a fence
  skips that block (a GPU, torchrun, a long run, or a working directory the test cannot
  give). Keep those few; :data:`MAX_SKIPPED` caps them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKETCHES = {"DESIGN.md"}  # interface sketches, not examples (see the module docstring)
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md")
                                     if p.name not in SKETCHES)]
SKIP = re.compile(r"^<!-- docs-test: skip \(.+\) -->$")
FENCE = re.compile(r"^```(\w*)\s*$")
MAX_SKIPPED = 3
# Pages whose examples train or certify whole datasets (tens of seconds): the slow tier.
SLOW_PAGES = {"certify.md", "training.md", "cheaper-certification.md", "file-formats.md",
              "stronger-certificates.md"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skipped: bool


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page (top level or indented in a list)."""
    found, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i].strip())
        if match is None or lines[i].strip() == "```":
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(line[indent:] for line in lines[i + 1:end])
        skipped = i > 0 and SKIP.match(lines[i - 1].strip()) is not None
        found.append(Block(page, i + 1, match.group(1), code, skipped))
        i = end + 1
    return found


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def page_param(page: Path) -> pytest.param:
    marks = [pytest.mark.slow] if page.name in SLOW_PAGES else []
    return pytest.param(page, id=page_id(page), marks=marks)


_RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for where, code in json.loads(sys.stdin.read()):
    print(f"--- {where}", flush=True)
    exec(compile(code, where, "exec"), namespace)
"""


@pytest.mark.parametrize("page", [page_param(p) for p in PAGES
                                  if any(b.lang == "python" for b in blocks(p))])
def test_python_examples_run(page: Path, tmp_path: Path) -> None:
    todo = [(f"{page_id(page)}:{b.line}", b.code) for b in blocks(page)
            if b.lang == "python" and not b.skipped]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                        os.environ.get("PYTHONPATH", "")]),
           # an example that calls a deprecated API fails (the warning points at its caller)
           "MPLBACKEND": "Agg", "PYTHONWARNINGS": "error::DeprecationWarning:__main__"}
    env.pop("SMOOTHMIX_DATA", None)  # the examples use the embedded MNIST
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(todo), env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"an example of {page_id(page)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def commands(code: str) -> list[list[str]]:
    """The ``smoothmix`` argument lists of a bash block (continuations joined, comments
    dropped, commands split at ``&&``, ``;`` and ``|``)."""
    found = []
    for line in code.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        command: list[str] = []
        for token in [*tokens, ";"]:
            if token not in ("&&", ";", "|", "||"):
                command.append(token)
                continue
            if command[:1] == ["smoothmix"]:
                found.append(command[1:])
            elif command[:1] == ["torchrun"] and "smoothmix" in command:
                found.append(command[command.index("smoothmix") + 1:])
            command = []
    return found


def bash_params() -> list[pytest.param]:
    return [pytest.param(args, id=f"{page_id(b.page)}:{b.line}:{args[0] if args else ''}")
            for page in PAGES for b in blocks(page)
            if b.lang == "bash" and not b.skipped for args in commands(b.code)]


@pytest.mark.parametrize("args", bash_params())
def test_bash_examples_parse(args: list[str]) -> None:
    from smoothmix.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            _, unknown = build_parser().parse_known_args(args)
        except SystemExit as exc:
            pytest.fail(f"smoothmix {shlex.join(args)}: {err.getvalue().strip()} ({exc})")
    assert not unknown, f"smoothmix {shlex.join(args)}: unknown arguments {unknown}"
    assert "deprecated" not in err.getvalue(), err.getvalue()


def test_examples_exist_and_few_are_skipped() -> None:
    every = [b for page in PAGES for b in blocks(page)]
    skipped = [f"{page_id(b.page)}:{b.line}" for b in every if b.skipped]
    assert len(skipped) <= MAX_SKIPPED, f"too many skipped examples: {skipped}"
    readme = [b for b in blocks(ROOT / "README.md") if b.lang == "python"]
    assert readme and not readme[0].skipped and readme[0].line <= 60
    assert bash_params(), "no smoothmix command found in the pages"


def test_readme_is_a_front_page() -> None:
    """Issue 27: a few screens, the two set-up commands in its first 12 lines (.ci/run greps
    for the second), a working example in its first 60."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    head = lines[:12]
    assert "pip install . && smoothmix demo" in head
    assert 'pip install -e ".[dev]" && ruff check . && mypy src && pytest' in head
    example = [b for b in blocks(ROOT / "README.md") if b.lang == "python"][0]
    assert example.line + example.code.count("\n") + 2 <= 60
    assert "load_pretrained" in example.code and ".certify(" in example.code


def test_extraction_understands_the_page_format(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("text\n```python\nx = 1\n```\n<!-- docs-test: skip (GPU) -->\n"
                    "```bash\nsmoothmix certify C \\\n  --sigma 0.5 --out o.tsv  # note\n```\n"
                    "1. item\n\n    ```python\n    y = 2\n    ```\n", encoding="utf-8")
    found = blocks(page)
    assert [(b.lang, b.code, b.skipped) for b in found] == [
        ("python", "x = 1", False),
        ("bash", "smoothmix certify C \\\n  --sigma 0.5 --out o.tsv  # note", True),
        ("python", "y = 2", False)]
    assert commands(found[1].code) == [["certify", "C", "--sigma", "0.5", "--out", "o.tsv"]]
    assert commands("pip install . && smoothmix demo\ntorchrun --nproc_per_node=4 -m "
                    "smoothmix train --outdir r") == [["demo"], ["train", "--outdir", "r"]]
