"""``smoothmix`` command line: a thin shell over the Python API.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` (``args -> int`` exit code). User errors are
:class:`~smoothmix.errors.SmoothmixError`: printed on one line, exit code 2; so are argparse's usage
errors (an unknown flag or choice), which name the subcommand and point at its ``--help``.

``--import MODULE`` (before or after the subcommand, repeatable) and the environment variable
``SMOOTHMIX_IMPORT`` (comma-separated) name modules to import before the subcommand runs, e.g.
one that adds its own architecture with :func:`smoothmix.models.register_model`. A name ending
in ``.py`` is loaded from that file.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from smoothmix.checks import SIGMA_LIMIT
from smoothmix.errors import SmoothmixError, first_line

__all__ = [
    "SIGMA_HELP", "add_device_argument", "add_threads_argument",
    "apply_threads", "build_parser", "choices_metavar",
    "dataset_choices", "import_modules", "main", "method_names", "model_names", "one_of",
]

# Order here is the order in `smoothmix --help`.
_COMMAND_MODULES = ("demo", "reproduce", "train", "targets", "presets", "certify", "attack",
                    "analyze", "diagnose")


# What an interrupted long command keeps and how to continue it (the others just stop).
_RESUME_HINTS = {
    "train": "rerun the same command with --resume to continue from the last finished "
             "epoch (from the start if none finished)",
    **dict.fromkeys(("certify", "predict", "attack", "targets", "demo", "reproduce"),
                    "finished work is kept: rerun the same command to resume"),
}


# Flags renamed so that one name has one meaning in every command (suggested when used).
_RENAMED = {"--quiet": "--no-progress", "--max": "--max-images"}

# Spellings deprecated in 0.5 or earlier and removed in 0.6 (CHANGELOG.md), by (command, old
# spelling; "" for a command), with what replaced them: an old spelling is an unknown flag or
# command, whose one-line error names the new one. (--batch stays a current flag of train,
# reproduce and diagnose.)
_REMOVED = {
    **{(command, "--batch"): "--noise-batch"
       for command in ("certify", "predict", "attack", "targets")},
    ("certify", "--radius"): "--radii",
    ("demo", "--train-images"): "--train-subset", ("demo", "--certify-skip"): "--skip",
    ("train", "--amp"): "--precision bf16",
    ("", "targets-merge"): "merge",
}


def _removed_hint(command: str, name: str) -> str:
    """`` (OLD is now NEW; ...)``, the hint of a spelling of ``command`` removed in 0.6,
    else ""."""
    new = _REMOVED.get((command, name))
    return "" if new is None else f" ({name} is now {new}; the old spelling was removed in 0.6)"


#: How every --sigma help begins: sigma's own interval, then the scale of the images it is
#: measured on ("sigma in [0, 1] pixel units" read as if sigma itself were in [0, 1]).
SIGMA_HELP = f"noise level sigma, in (0, {SIGMA_LIMIT:g}] for images scaled to [0, 1]"


def add_device_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``, the same in every command: default ``auto``, which
    :func:`smoothmix.device.resolve_device` turns into CUDA when available (under torchrun
    ``cuda:LOCAL_RANK``), else the CPU. Commands pass ``args.device`` to resolve_device."""
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (default auto: CUDA if available, "
                        "under torchrun cuda:LOCAL_RANK; else the CPU)")


def add_threads_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--threads T`` for the commands whose threads are not part of a result file's record
    (train, demo): torch's intra-op threads for this process."""
    parser.add_argument("--threads", type=int, default=None, metavar="T",
                        help="torch intra-op threads (default: torch's, i.e. the cores; on "
                        "cores shared with other jobs fewer threads can be faster)")


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op threads from ``--threads`` (checked: an integer >= 1)."""
    if threads is None:
        return
    import torch

    from smoothmix.checks import check_count

    torch.set_num_threads(check_count("--threads", threads))


def one_of(names: Sequence[str]) -> str:
    """``a, b or c``: a list of names for help text."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def choices_metavar(names: Sequence[str]) -> str:
    """``{a,b}``: argparse's spelling of the choices, for an option that checks its own value
    (with a one-line error naming the valid ones) instead of taking ``choices``."""
    return "{" + ",".join(names) + "}"


def dataset_choices() -> list[str]:
    """Every registered dataset (those of ``--import`` modules included): the choices of
    ``--dataset``."""
    from smoothmix.data import list_datasets

    return list_datasets()


def model_names() -> list[str]:
    """Every registered architecture, for help text."""
    from smoothmix.models import list_models

    return list_models()


def method_names() -> list[str]:
    """Every registered training method, for help text."""
    from smoothmix.methods import list_methods

    return list_methods()


class _OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors (an unknown choice, a missing or ill-typed value) on one line,
    exit 2, like every other bad input; the usage stays one ``--help`` away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}{self._typo_hint(message)}"
                  f"{self._removed_command_hint(message)} (see {self.prog} --help)\n")

    def _removed_command_hint(self, message: str) -> str:
        """When the top-level parser rejects the command given (``targets-merge``), the
        command that replaced it, if it is a removed one. The command is read from the
        command line, not from argparse's message, whose wording varies between Pythons."""
        if self.prog != "smoothmix" or "invalid choice" not in message:
            return ""
        return _removed_hint("", _requested_imports(_ARGV)[1])

    def _typo_hint(self, message: str) -> str:
        """For "the following arguments are required: --out": the flag meant by each unknown
        one given (``--outt`` is not known, so argparse only saw --out missing, and stops
        before the unknown flags, ``--sigam 0.5`` too, are reported): the closest required
        flag, else the closest of all."""
        if "arguments are required" not in message:
            return ""
        required = [f for f in message.split(":", 1)[1].replace(",", " ").split()
                    if f.startswith("--")]
        flags = sorted(f for f in self._option_string_actions if f.startswith("--"))
        given = [t.split("=", 1)[0] for t in _ARGV if t.startswith("--")
                 and t.split("=", 1)[0] not in self._option_string_actions]
        command = self.prog.rsplit(" ", 1)[-1]
        pairs = [(g, near[0]) for g in given
                 if (near := [_REMOVED[command, g]] if (command, g) in _REMOVED  # gone in 0.6
                     else difflib.get_close_matches(g, required, n=1, cutoff=0.6)
                     or difflib.get_close_matches(g, flags, n=1, cutoff=0.6))]
        meant = ", ".join(f"{want} for {typo}" for typo, want in pairs)
        return f" (did you mean {meant}?)" if pairs else ""


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="smoothmix",
        description="Train and certify provably robust classifiers by randomized smoothing "
        "(SmoothMix, Gaussian, Stability, SmoothAdv, MACER, Consistency, CAT-RS).",
    )
    import_help = ("import MODULE (or load a .py file) before running, e.g. one that calls "
                   "smoothmix.models.register_model for a checkpoint of your own network; "
                   "repeatable; also $SMOOTHMIX_IMPORT (comma-separated)")
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        metavar="MODULE", help=import_help)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"smoothmix.cli.{name}").register(subparsers)
    for subparser in subparsers.choices.values():  # the same option after the subcommand
        subparser.add_argument("--import", dest="sub_imports", action="append", default=[],
                               metavar="MODULE", help=import_help)
    return parser


def import_modules(names: Sequence[str]) -> None:
    """Import each module name (or ``.py`` file); a failure is one :class:`SmoothmixError`."""
    for name in dict.fromkeys(names):  # each once, in order
        if name.endswith(".py") and not Path(name).is_file():
            raise SmoothmixError(f"--import {name}: no such file")
        try:
            if name.endswith(".py"):
                path = Path(name)
                spec = importlib.util.spec_from_file_location(path.stem, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = module
                spec.loader.exec_module(module)
            else:
                if os.getcwd() not in sys.path:  # as `python -m` would, for the console script
                    sys.path.append(os.getcwd())
                importlib.import_module(name)
        except SmoothmixError as exc:  # e.g. register_model refusing a name clash
            raise SmoothmixError(f"--import {name}: {exc}") from None
        except Exception as exc:
            raise SmoothmixError(f"--import {name} failed: {type(exc).__name__}: "
                                 f"{first_line(exc)}") from None


def _requested_imports(argv: Sequence[str]) -> tuple[list[str], str]:
    """The modules named by $SMOOTHMIX_IMPORT and ``--import`` anywhere in ``argv``, and the
    subcommand (for messages). They are imported before the parser is built, so that the
    architectures, methods and datasets they register are among its choices."""
    prescan = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    prescan.add_argument("--import", dest="imports", action="append", default=[])
    known, rest = prescan.parse_known_args(list(argv))
    command = next((token for token in rest if not token.startswith("-")), "")
    env = [m.strip() for m in os.environ.get("SMOOTHMIX_IMPORT", "").split(",") if m.strip()]
    return [*env, *known.imports], command


# The command line being parsed, for the parsers' typo hints (argparse does not hand it on).
_ARGV: list[str] = []


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Waiting OpenMP threads sleep instead of spinning, unless the user chose otherwise:
    # on cores shared with another job, spinning threads burned 1.8x the CPU seconds and took
    # 3.5x the wall time per training step, and cost nothing measurable when alone
    # (results/2026-12-06-oversubscription-cpu). It must be set before torch loads OpenMP.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _ARGV[:] = argv
    imports, command = _requested_imports(argv)
    try:
        import_modules(imports)
    except SmoothmixError as exc:
        print(f"{' '.join(filter(None, ('smoothmix', command)))}: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _reject_unknown(parser, args.command, unknown)
    try:
        return int(args.func(args) or 0)
    except SmoothmixError as exc:
        print(f"smoothmix {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = _RESUME_HINTS.get(args.command)
        print(f"smoothmix {args.command}: interrupted" + (f"; {hint}" if hint else ""),
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`smoothmix presets | head`); that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _reject_unknown(parser: argparse.ArgumentParser, command: str,
                    unknown: Sequence[str]) -> None:
    """Report unknown arguments in the subcommand's name (not the top-level one, which
    argparse would use) with the nearest valid flag of that subcommand; exits with 2."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subparser = sub.choices[command]
    flags = sorted(subparser._option_string_actions)
    hints, removed = [], []
    for token in unknown:
        if not token.startswith("-"):
            continue
        name = token.split("=", 1)[0]
        if (command, name) in _REMOVED:  # a spelling removed in 0.6: name what replaced it
            removed.append(_removed_hint(command, name))
            continue
        spelled = _RENAMED.get(name, name.replace("_", "-"))
        near = [spelled] if spelled in flags else difflib.get_close_matches(name, flags, n=1)
        if near:
            hints.append(f"{name} -> {near[0]}")
    hint = f" (did you mean: {', '.join(hints)}?)" if hints else ""
    subparser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}{''.join(removed)}")


if __name__ == "__main__":
    sys.exit(main())
