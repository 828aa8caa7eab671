"""The structure the code keeps (docs/DESIGN.md): short functions, and the dataset runners'
modules small because the plumbing lives in smoothmix.storage and smoothmix.runner.

Cyclomatic complexity (<= 15) is ruff's C901, configured in pyproject.toml.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "smoothmix"
MAX_FUNCTION_LINES = 60
# argparse tables: one add_argument per option, long by nature.
EXEMPT = {("cli", "register")}


def long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if length > limit and (path.parent.name, node.name) not in EXEMPT:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_the_limit():
    assert long_functions(SRC, MAX_FUNCTION_LINES) == []


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert long_functions(tmp_path, MAX_FUNCTION_LINES) == ["m.py:1 f (61 lines)"]


def test_certification_and_targets_hold_at_most_60_percent_of_release_02():
    # 0.2's certification.py + targets.py had 1,064 lines, most of them file plumbing.
    lines = sum(len((SRC / name).read_text().splitlines())
                for name in ("certification.py", "targets.py"))
    assert lines <= 0.6 * 1064
