"""MkDocs hooks (``hooks:`` in mkdocs.yml): the parts of the site generated at build time.

A page asks for generated content with a marker line, replaced before Markdown runs:

- ``<!-- generated: presets -->``: the presets table, from the registry
  (:func:`smoothmix.training.presets.format_presets_table`, what ``smoothmix presets``
  prints), so the site cannot drift from the code;
- ``<!-- generated: method-options -->``: each training method's options, defaults and
  help, from the method registry;
- ``<!-- generated: mnist-summary -->``: the README's ACR summary of the MNIST evaluation;
- ``<!-- generated: result-columns -->``: the header of each kind of result file;
- ``<!-- generated: pretrained -->``: the pretrained models, from their model cards;
- ``<!-- generated: api -->``: one mkdocstrings block per name of ``smoothmix.__all__``;
  a name added to the facade appears without editing the page;
- ``<!-- include: PATH -->``: a Markdown file from outside ``docs/`` (CHANGELOG.md,
  results/README.md), its relative links pointed at the repository, where they resolve.

:class:`DocstringMarkdown`, a Griffe extension (``extensions:`` of mkdocstrings in
mkdocs.yml), shows the docstrings' reStructuredText habits as Markdown: ``:func:`name```
as code, ``>>>`` examples as code blocks. Only the packages of the ``docs`` extra are needed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:  # document this checkout, not another installed copy
    sys.path.insert(0, str(ROOT / "src"))

import griffe  # noqa: E402  (installed with mkdocstrings-python)

import smoothmix  # noqa: E402  (after the sys.path line above)

# The facade's names, grouped for reading; a name in no group lands in "Other names".
API_GROUPS: dict[str, tuple[str, ...]] = {
    "Certify one input": ("Smooth", "certified_radius", "clopper_pearson_lower"),
    "Models": ("load_pretrained", "list_pretrained", "load_model", "create_model",
               "register_model"),
    "Certify, predict, decide and attack a dataset": (
        "RunSpec", "certify_dataset", "predict_dataset", "decide_dataset", "attack_dataset",
        "read_results"),
    "Denoised smoothing": ("Denoised", "load_denoiser"),
    "Train": ("train", "create_method", "register_method"),
    "Data": ("load_dataset", "register_dataset"),
    "Errors and version": ("SmoothmixError", "__version__"),
}

_MARKER = re.compile(r"^<!-- (generated|include): *(\S+) *-->$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`~?([^`]+)`")
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s#]*)(#[^)\s]*)?\)")


def repo_url(config: Any) -> str:
    return str(config["repo_url"]).rstrip("/")


def presets_table() -> str:
    """The output of ``smoothmix presets`` as Markdown tables, one per dataset and
    architecture (the same rows and cells, the two grouping columns as a heading)."""
    from smoothmix.training.presets import format_presets_table

    lines = format_presets_table().splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=len(header) - 1) for line in lines[1:]]
    if any(len(r) not in (len(header), len(header) - 1) for r in rows) \
            or header[1:3] != ["data", "arch"]:  # the layout changed: show it as printed
        return "```text\n" + "\n".join(lines) + "\n```"
    rows = [[*r, *[""] * (len(header) - len(r))] for r in rows]
    keep = [0, *range(3, len(header))]
    out: list[str] = []
    for data, arch in dict.fromkeys((r[1], r[2]) for r in rows):
        out += [f"### {data} ({arch})\n", "| " + " | ".join(header[k] for k in keep) + " |",
                "|" + "---|" * len(keep)]
        for r in rows:
            if (r[1], r[2]) == (data, arch):
                cells = [f"`{r[0]}`", *(r[k] for k in keep[1:])]
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def method_options_tables() -> str:
    """Per registered training method, its options: CLI flag, default and help text."""
    from smoothmix.methods import list_methods, method_options

    out = []
    for name in list_methods():
        out.append(f"### `{name}`\n")
        options = method_options(name)
        if not options:
            out.append("No options of its own: σ, the data and the schedule are all it needs.\n")
            continue
        out += ["| option | flag | default | what it is |", "|---|---|---|---|"]
        for key, info in options.items():
            flag = "--deferred" if key == "deferred_epochs" else "--" + key.replace("_", "-")
            text = info.help.replace("|", "\\|")
            out.append(f"| `{key}` | `{flag}` | `{info.default!r}` | {text} |")
        out.append("")
    return "\n".join(out)


def mnist_summary() -> str:
    """The README's ACR summary (between its ``mnist-evaluation --summary`` markers, which
    ``scripts/mnist-evaluation --summary`` regenerates), so the two cannot disagree."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- mnist-evaluation --summary -->\n(.*?)<!-- /mnist-evaluation -->",
                      readme, re.DOTALL)
    if found is None:
        raise ValueError("README.md lost its <!-- mnist-evaluation --summary --> block")
    return found.group(1).strip()


def result_columns() -> str:
    """The header of each kind of result file, current and legacy, from
    :data:`smoothmix.storage.table.COLUMNS` and ``LEGACY`` (the one reader and writer)."""
    from smoothmix.storage.table import COLUMNS, LEGACY

    out = ["| file kind | columns (current) | older headers still read |", "|---|---|---|"]
    for kind, columns in COLUMNS.items():
        old = "<br>".join(" ".join(h) for h in LEGACY.get(kind, ())) or "—"
        out.append(f"| `{kind}` | `{' '.join(columns)}` | {old} |")
    return "\n".join(out)


def pretrained_table() -> str:
    """The pretrained models and their certified figures, from the index shipped in the
    package (``smoothmix/data/pretrained.json``, the model cards)."""
    from smoothmix.pretrained import list_pretrained, pretrained_info

    out = ["| name | method | σ | training precision | epochs | ACR (CERTIFY) | on | N, α |",
           "|---|---|---|---|---|---|---|---|"]
    for name in list_pretrained():
        card = pretrained_info(name)
        cert = card.get("certify") or {}
        acr = f"{cert['acr']:.3f}" if "acr" in cert else "—"
        budget = f"{cert['n']:,}, {cert['alpha']}" if "n" in cert else "—"
        out.append(f"| `{name}` | {card['method']} | {card['sigma']} | {card['precision']} | "
                   f"{card['epochs']} | {acr} | {cert.get('images', '—')} | {budget} |")
    return "\n".join(out)


def api_reference() -> str:
    """One ``::: smoothmix.NAME`` block per public name, grouped as :data:`API_GROUPS`."""
    public = list(smoothmix.__all__)
    grouped = {name for names in API_GROUPS.values() for name in names}
    groups = {title: [n for n in names if n in public] for title, names in API_GROUPS.items()}
    groups["Other names"] = [n for n in public if n not in grouped]
    parts = []
    for title, names in groups.items():
        if names:
            parts.append(f"## {title}\n")
            parts += [f"::: smoothmix.{name}\n" for name in names]
    return "\n".join(parts)


def include(path: str, config: Any) -> str:
    """A repository file's Markdown for a page at the top of the site, its first heading
    dropped (the page has its own). Its relative links, written for GitHub from the file's
    own folder, point at the site's page where the target is one (``docs/*.md``) and at
    the repository otherwise."""
    source = ROOT / path
    text = re.sub(r"\A# [^\n]*\n", "", source.read_text(encoding="utf-8"))
    docs = ROOT / "docs"

    def retarget(match: re.Match[str]) -> str:
        start, target, anchor = match.group(1), match.group(2), match.group(3) or ""
        if not target or re.match(r"^[a-z]+:", target) or target.startswith("/"):
            return match.group(0)  # an anchor on the same page, or already absolute
        where = (source.parent / target).resolve()
        if where.parent == docs and where.suffix == ".md":
            return f"{start}{where.name}{anchor})"
        kind = "tree" if where.is_dir() else "blob"
        in_repo = where.relative_to(ROOT).as_posix()
        return f"{start}{repo_url(config)}/{kind}/main/{in_repo}{anchor})"

    return _LINK.sub(retarget, text)


_LIST_ITEM = re.compile(r"^(?:[-*+]|\d+\.) ")


def github_lists(markdown: str) -> str:
    """A blank line before a list that starts right under a paragraph: GitHub renders
    such a list, Python-Markdown would run it into the paragraph (code blocks untouched)."""
    out: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and _LIST_ITEM.match(line) and out and out[-1].strip() \
                and not _LIST_ITEM.match(out[-1]) and not out[-1].startswith((" ", "|", "#")):
            out.append("")
        out.append(line)
    return "\n".join(out) + ("\n" if markdown.endswith("\n") else "")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, what = match.group(1), match.group(2)
        if kind == "include":
            return include(what, config)
        generators = {"presets": presets_table, "api": api_reference,
                      "method-options": method_options_tables, "mnist-summary": mnist_summary,
                      "result-columns": result_columns, "pretrained": pretrained_table}
        if what not in generators:
            raise ValueError(f"{page.file.src_path}: unknown generated block {what!r}")
        return generators[what]()

    return github_lists(_MARKER.sub(replace, markdown))


def docstring_markdown(text: str) -> str:
    """A docstring written for ``help()`` and Sphinx, as Markdown: roles become code, a
    ``>>>`` session a fenced ``pycon`` block, a paragraph's closing ``::`` a colon."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = re.sub(r"::$", ":", text, flags=re.MULTILINE)
    out: list[str] = []
    in_session = False
    for line in text.splitlines():
        if line.startswith(">>>") and not in_session:
            out.append("```pycon")
            in_session = True
        elif in_session and not line.strip():
            out.append("```")
            in_session = False
        out.append(line)
    if in_session:
        out.append("```")
    return "\n".join(out)


class DocstringMarkdown(griffe.Extension):
    """Rewrites each docstring with :func:`docstring_markdown` as Griffe reads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = docstring_markdown(obj.docstring.value)
