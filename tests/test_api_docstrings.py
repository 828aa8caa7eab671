"""Every public name has a docstring that says what it guarantees.

`mkdocs build --strict` fails on a broken link but not on a missing docstring: the API
reference (docs/api.md, generated from ``smoothmix.__all__``) would then show a bare
signature. This walks ``smoothmix.__all__`` and fails on a name without a docstring, or with
one too short to state a contract (a first sentence under five words). Data names (such as
``__version__``) need an attribute docstring: a string literal right after the assignment in
the module that defines them, which is what the site shows.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import smoothmix

MIN_WORDS = 5  # "Load a model." says nothing about what comes back or what can fail


def attribute_docstring(module_file: str, name: str) -> str | None:
    """The string literal that follows ``name = ...`` at the top level of a module."""
    body = ast.parse(Path(module_file).read_text(encoding="utf-8")).body
    for node, after in zip(body, body[1:], strict=False):
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                    and isinstance(after.value.value, str):
                return after.value.value
    return None


def docstring_of(name: str) -> str | None:
    value = getattr(smoothmix, name)
    if inspect.isclass(value) or callable(value):
        return inspect.getdoc(value)
    return attribute_docstring(smoothmix.__file__, name)


def first_sentence(doc: str) -> str:
    paragraph = doc.strip().split("\n\n", 1)[0]
    return re.split(r"(?<=\.)\s", " ".join(paragraph.split()), maxsplit=1)[0]


@pytest.mark.parametrize("name", smoothmix.__all__)
def test_public_name_has_a_contract(name: str) -> None:
    doc = docstring_of(name)
    assert doc and doc.strip(), f"smoothmix.{name} has no docstring (the API reference shows it)"
    words = first_sentence(doc).split()
    assert len(words) >= MIN_WORDS, (
        f"smoothmix.{name}'s docstring starts {first_sentence(doc)!r}: say what it returns or "
        "guarantees in its first sentence")


def test_all_names_resolve() -> None:
    """The API page documents exactly these names; each must exist."""
    missing = [name for name in smoothmix.__all__ if not hasattr(smoothmix, name)]
    assert not missing


def test_checker_rejects_a_one_word_docstring(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('x = 1\n"""Version."""\ny = 2\n', encoding="utf-8")
    assert attribute_docstring(str(module), "x") == "Version."
    assert attribute_docstring(str(module), "y") is None
    assert len(first_sentence("Version.").split()) < MIN_WORDS
