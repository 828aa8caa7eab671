"""Pretrained models by name: the models smoothmix trained at the published budget.

Each model is a weights-only file (the ``state_dict`` of ``Sequential(Normalize, net)`` as
:func:`smoothmix.models.create_model` builds it, loadable with ``torch.load(...,
weights_only=True)``) and an entry of the index shipped in the package
(``smoothmix/data/pretrained.json``): file, SHA-256, architecture, preset, sigma, training
precision, seed, commit, licence and the certified figures with the images they were
measured on -- the model card. ``scripts/export-pretrained`` writes both from the training
checkpoints and the result files, so no figure is typed by hand.

Where the files live, and why: in ``weights/`` at the repository root, committed (about
1.7 MB each). Not inside the Python package, so the wheel stays small; in the repository, so
a clone has them offline and ``torch.hub.load(<checkout>, ..., source="local")`` works.
A file is looked for, in this order:

1. ``$SMOOTHMIX_WEIGHTS`` (a directory holding the files);
2. the source checkout's ``weights/`` (found beside the package's ``src/`` for an editable
   install, ``pip install -e .``, or ``PYTHONPATH=src``);
3. the download cache (``$SMOOTHMIX_CACHE`` or ``~/.cache/smoothmix``, folder ``weights``);
4. unless ``source="local"``: ``$SMOOTHMIX_WEIGHTS_URL`` (default :data:`DEFAULT_URL`) +
   the file name, downloaded into the cache. A ``file://`` URL works offline.

Every file is checked against the index's SHA-256 before use, wherever it came from; a
mismatch is a one-line error naming the file. The weights are released under the project's
licence (MIT), stated in each index entry.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from smoothmix.errors import SmoothmixError, first_line, require
from smoothmix.storage import atomic_write_with

__all__ = ["DEFAULT_URL", "PREFIX", "hub_name", "list_pretrained", "load_pretrained",
           "pretrained_checkpoint", "pretrained_info", "pretrained_name", "pretrained_of_file",
           "weights_file"]

#: What marks a pretrained model where the CLI expects a checkpoint: ``pretrained:NAME``.
PREFIX = "pretrained:"

#: Where the weights are downloaded from when no local copy exists (``$SMOOTHMIX_WEIGHTS_URL``
#: overrides it): the ``weights/`` folder of the repository's main branch.
DEFAULT_URL = "https://github.com/smoothmix/smoothmix/raw/main/weights/"

_INDEX = Path(__file__).resolve().parent / "data" / "pretrained.json"
_SOURCES = (None, "local", "url")
_DOWNLOAD_TIMEOUT_S = 60


@lru_cache(maxsize=1)
def _index() -> dict[str, dict[str, Any]]:
    with _INDEX.open(encoding="utf-8") as fh:
        models: dict[str, dict[str, Any]] = json.load(fh)["models"]
    return models


def list_pretrained() -> list[str]:
    """The names of the pretrained models (sorted), each loadable by
    :func:`load_pretrained`, ``pretrained:NAME`` in the CLI and ``torch.hub``."""
    return sorted(_index())


def pretrained_info(name: str) -> dict[str, Any]:
    """The model card of ``name`` (a copy of its index entry, with ``name`` added): file,
    sha256, arch, dataset, preset, sigma, precision, seed, commit, licence and the
    certified figures with the images they were measured on. An unknown name is a one-line
    :class:`SmoothmixError` listing the known names (with the nearest one)."""
    entry = _index().get(name) if isinstance(name, str) else None
    if entry is None:
        known = list_pretrained()
        near = difflib.get_close_matches(name, known, n=1) if isinstance(name, str) else []
        guess = f" (did you mean {near[0]!r}?)" if near else ""
        raise SmoothmixError(f"unknown pretrained model {name!r}{guess}; known: "
                             f"{', '.join(known)}")
    return json.loads(json.dumps({"name": name, **entry}))  # a deep copy


def hub_name(name: str) -> str:
    """The ``torch.hub`` entrypoint of ``name``: ``mnist-smoothmix-0.50`` ->
    ``mnist_smoothmix_050``."""
    return name.replace("-", "_").replace(".", "")


def pretrained_name(reference: object) -> str | None:
    """``NAME`` when ``reference`` is ``"pretrained:NAME"`` (a CLI checkpoint argument), else
    None."""
    text = os.fspath(reference) if isinstance(reference, (str, os.PathLike)) else None
    if isinstance(text, str) and text.startswith(PREFIX):
        return text[len(PREFIX):]
    return None


def pretrained_of_file(path: str | os.PathLike) -> str | None:
    """The name of the pretrained model whose weights file ``path`` is (by its SHA-256), or
    None: a weights-only file given where a checkpoint is expected is then named for what
    it is (``pretrained:NAME`` loads it with its model card)."""
    digest = _sha256(Path(path))
    return next((name for name, entry in sorted(_index().items())
                 if entry.get("sha256") == digest), None)


def _checkout_weights() -> Path | None:
    """``weights/`` of the source checkout this package is imported from (``src/smoothmix``
    -> the checkout root), when there is one."""
    root = Path(__file__).resolve().parents[2]
    return root / "weights" if (root / "pyproject.toml").is_file() else None


def _cache_dir() -> Path:
    base = os.environ.get("SMOOTHMIX_CACHE") or Path.home() / ".cache" / "smoothmix"
    return Path(base) / "weights"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, sha256: str, where: str) -> Path:
    found = _sha256(path)
    require(found == sha256, f"weights file {path} ({where}) fails its hash check: SHA-256 "
            f"{found[:12]}..., the index says {sha256[:12]}... (corrupt or tampered; delete "
            "it or fetch it again)")
    return path


def weights_file(name: str, source: str | None = None) -> Path:
    """The verified local path of ``name``'s weights, downloading them into the cache when
    no local copy exists (see the module docstring for the order). ``source="local"``
    never touches the network; ``source="url"`` skips the local copies (not the cache)."""
    require(source in _SOURCES, f"source must be None, 'local' or 'url', got {source!r}")
    info = pretrained_info(name)
    file, sha256 = info["file"], info["sha256"]
    places: list[tuple[Path | None, str]] = []
    if source != "url":
        env = os.environ.get("SMOOTHMIX_WEIGHTS")
        places += [(Path(env) if env else None, "$SMOOTHMIX_WEIGHTS"),
                   (_checkout_weights(), "the source checkout")]
    places.append((_cache_dir(), "the download cache"))
    for folder, where in places:
        if folder is not None and (folder / file).is_file():
            return _verified(folder / file, sha256, where)
    searched = ", ".join(str(f) for f, _ in places if f is not None)
    require(source != "local", f"no local copy of {file} for pretrained model {name!r} "
            f"(looked in {searched}); set $SMOOTHMIX_WEIGHTS to a folder holding it, or "
            "allow a download (source=None)")
    return _download(name, file, sha256)


def _download(name: str, file: str, sha256: str) -> Path:
    """Fetch ``file`` from ``$SMOOTHMIX_WEIGHTS_URL`` into the cache through storage
    (:func:`smoothmix.storage.atomic_write_with`: fsync'ed, the umask's mode), checked before
    it is moved into place (a failed or tampered download leaves nothing behind)."""
    url = (os.environ.get("SMOOTHMIX_WEIGHTS_URL") or DEFAULT_URL).rstrip("/") + "/" + file

    def fetch(out: IO[bytes]) -> None:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise SmoothmixError(
                f"cannot download the weights of pretrained model {name!r} from {url} "
                f"({first_line(exc)}); with no network, point $SMOOTHMIX_WEIGHTS at a "
                f"folder holding {file} (e.g. a clone's weights/)") from None
        found = digest.hexdigest()
        require(found == sha256, f"downloaded weights {url} fail their hash check: SHA-256 "
                f"{found[:12]}..., the index says {sha256[:12]}... (not kept)")

    target = _cache_dir() / file
    atomic_write_with(target, fetch)
    return target


def _state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad bytes; all mean "unreadable"
        raise SmoothmixError(f"cannot read weights file {path}: {first_line(exc)}") from None
    require(isinstance(state, dict), f"weights file {path} does not hold a state_dict")
    return state


def pretrained_checkpoint(name: str, source: str | None = None) -> dict[str, Any]:
    """``name`` as a checkpoint dict that :func:`smoothmix.checkpoint.load_model` and the
    CLI read like a training checkpoint (arch, state_dict, sigma, normalisation, classes,
    method, the recipe in ``config``), plus ``pretrained`` (the name), ``weights_file`` and
    ``weights_sha256``."""
    info = pretrained_info(name)
    path = weights_file(name, source)
    return {
        "arch": info["arch"], "state_dict": _state_dict(path), "arch_kwargs": {},
        "num_classes": info["num_classes"], "normalization": info["normalization"],
        "method": info["method"], "sigma": info["sigma"],
        "config": {"dataset": info["dataset"], "preset": info["preset"],
                   "precision": info["precision"], "seed": info["seed"]},
        "git_commit": info["commit"], "pretrained": name, "weights_file": str(path),
        "weights_sha256": info["sha256"],
    }


def load_pretrained(name: str, device: Any = None, *,
                    source: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Load pretrained model ``name`` (see :func:`list_pretrained`): returns ``(model,
    info)``, the model built by :func:`smoothmix.models.create_model` with the weights
    loaded strictly, in eval mode, on ``device`` (default CPU), and its model card
    (:func:`pretrained_info`, plus ``path``: the verified weights file).

    The weights are found locally or downloaded with their SHA-256 checked (module
    docstring); ``source="local"`` never touches the network. Every failure (unknown name,
    hash mismatch, no network) is a one-line :class:`SmoothmixError`.

    >>> model, info = load_pretrained("mnist-smoothmix-0.50", source="local")
    >>> info["sigma"], info["certify"]["acr"] > 1.5
    (0.5, True)
    """
    from smoothmix.models import create_model

    info = pretrained_info(name)
    path = weights_file(name, source)
    model = create_model(info["arch"], num_classes=info["num_classes"],
                         normalization=info["normalization"])
    try:
        model.load_state_dict(_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise SmoothmixError(f"weights file {path} does not fit {info['arch']!r}: "
                             f"{first_line(exc)}") from None
    if device is not None:
        model.to(device)
    model.eval()
    info["path"] = str(path)
    return model, info
