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


# Issue 26's shapes: the statistical core Cohen-sized, no module too big to read, few
# silenced type errors, and the grid branch only inside the noise classes.
MAX_CORE_CODE_LINES = 160  # "about 150"
MAX_MODULE_CODE_LINES = 500
MAX_TYPE_IGNORES = 20


def code_lines(path: Path) -> int:
    """Lines of code: not blank, not a comment, not inside a docstring."""
    text = path.read_text(encoding="utf-8")
    doc_lines: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))  # type: ignore[operator]
    return sum(1 for number, line in enumerate(text.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and number not in doc_lines)


def test_code_lines_ignores_docstrings_comments_and_blanks(tmp_path):
    (tmp_path / "m.py").write_text('"""Doc\nstring."""\n\n# note\ndef f():\n    """Doc."""\n'
                                   '    return 1  # why\n')
    assert code_lines(tmp_path / "m.py") == 2


def test_the_statistical_core_is_cohen_sized():
    assert code_lines(SRC / "core.py") <= MAX_CORE_CODE_LINES


def test_no_module_is_over_500_lines_of_code():
    big = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
           if (n := code_lines(p)) > MAX_MODULE_CODE_LINES}
    assert big == {}


def test_type_errors_are_rarely_silenced():
    count = sum(p.read_text(encoding="utf-8").count("type: ignore") for p in SRC.rglob("*.py"))
    assert count <= MAX_TYPE_IGNORES


def test_the_grid_branch_lives_in_the_noise_classes():
    """Noise is an object: no module but the noise classes (and the readers of old files'
    settings) branches on a grid."""
    readers = {"noise.py", "grid.py", "analysis.py"}
    found = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py") if p.name not in readers
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip().startswith(("if grid", "elif grid", "if self.grid"))]
    assert found == []
