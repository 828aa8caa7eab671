"""Record the commit an installed copy is built from (everything else is in pyproject.toml).

A non-editable install (``pip install .``) is a copy outside git, so at run time it cannot
tell which commit it is. The build writes the checkout's commit into
``smoothmix/BUILD_COMMIT`` beside the copied package; ``smoothmix.provenance`` reads it.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _provenance():
    # Loaded as a file: importing the package would need torch at build time.
    spec = importlib.util.spec_from_file_location(
        "_smoothmix_provenance", ROOT / "src" / "smoothmix" / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        provenance = _provenance()
        commit = provenance.checkout_commit(ROOT)
        if commit is not None and not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "smoothmix" / provenance.BUILD_COMMIT
            target.write_text(commit + "\n", encoding="utf-8")


setup(cmdclass={"build_py": BuildPyWithCommit})
