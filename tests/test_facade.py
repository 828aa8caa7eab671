"""The top-level facade (issue 26, item 5) and the one declaration of the version (item 9)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import smoothmix

ROOT = Path(__file__).resolve().parents[1]


def test_import_smoothmix_is_light():
    """The names load on first use: ``import smoothmix`` imports neither torch nor scipy."""
    code = ("import smoothmix, sys; "
            "heavy = [m for m in ('torch', 'scipy', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy; "
            "assert smoothmix.SmoothmixError and smoothmix.__version__")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={"PYTHONPATH": str(ROOT / "src")})


def test_every_exported_name_resolves_and_is_documented():
    assert len(smoothmix.__all__) == len(set(smoothmix.__all__))
    for name in smoothmix.__all__:
        value = getattr(smoothmix, name)
        if name != "__version__":
            assert inspect.getdoc(value), f"smoothmix.{name} has no docstring"
            assert value.__module__.startswith("smoothmix."), name
    assert set(smoothmix.__all__) <= set(dir(smoothmix))
    from smoothmix import Smooth, train  # from-imports go through __getattr__ too
    from smoothmix.core import Smooth as core_smooth
    from smoothmix.training import train as training_train

    assert Smooth is core_smooth and train is training_train
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        smoothmix.nope  # noqa: B018


def test_every_module_declares_all():
    """Every module of the package says what it exports (``__all__``)."""
    missing = []
    for info in pkgutil.walk_packages(smoothmix.__path__, "smoothmix."):
        if info.name.endswith("__main__"):
            continue  # __main__: running it is its only use
        path = Path(importlib.util.find_spec(info.name).origin)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                 for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                 if isinstance(t, ast.Name)}
        if "__all__" not in names:
            missing.append(info.name)
    assert not missing, f"modules without __all__: {missing}"


def test_version_is_declared_once():
    from setuptools.config.pyprojecttoml import read_configuration

    project = read_configuration(ROOT / "pyproject.toml", expand=False)
    assert "version" not in project["project"], "declare the version only in __init__.py"
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "smoothmix.__version__"
    # setuptools reads the literal without importing the package (no torch at build time).
    tree = ast.parse((ROOT / "src" / "smoothmix" / "__init__.py").read_text())
    literal = next(node.value.value for node in tree.body if isinstance(node, ast.Assign)
                   and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__version__"])
    assert literal == smoothmix.__version__
    expanded = read_configuration(ROOT / "pyproject.toml", expand=True)
    assert expanded["project"]["version"] == smoothmix.__version__
