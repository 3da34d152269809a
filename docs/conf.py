"""Sphinx configuration of the ulrec documentation (``python3 -m sphinx -W --keep-going -b html docs docs/_build/html``).

The API pages are autodoc of the installed packages: importing them needs numpy, scipy and gymnasium only (the LLM
parts import torch when a model is made, not on import), so the build needs no GPU, no model and no network.
"""

from __future__ import annotations

import doctest
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this checkout, not another installed copy

project = "ulrec"
author = "the ulrec authors"
copyright = "2025, the ulrec authors"
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = "ulrec"

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Doctests (``python3 -m sphinx -W -b doctest docs docs/_build/doctest``) run from the repository root.
doctest_global_setup = "import os; os.chdir(%r)" % str(ROOT)
# Exception messages are compared too (Sphinx ignores their detail by default): the guides show the errors' text.
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1


_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_HEADING = re.compile(r"^(\s*)#{2,4} (.+)$")
_TABLE_RULE = re.compile(r"^\s*\|[\s|:-]+\|\s*$")


def _markdown_blocks_to_rst(lines: list[str]) -> list[str]:
    """The Markdown block syntax of Gymnasium-style docstrings (``## Heading``, pipe tables, fenced code) as reST.

    Env docstrings follow Gymnasium's Markdown layout, which ``help()`` and IDEs show as it is; autodoc reads reST,
    so their headings become rubrics, their tables list-tables and their fences code blocks. Inline markup
    (````literal````, ``:class:`` roles) is already reST. Docstrings without such blocks pass through unchanged.
    """
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence, heading = _FENCE.match(line), _HEADING.match(line)
        if fence:
            indent, lang = fence.group(1), fence.group(2) or "text"
            out += [f"{indent}.. code-block:: {lang}", ""]
            i += 1
            while i < len(lines) and not _FENCE.match(lines[i]):
                out.append(f"{indent}   {lines[i]}" if lines[i].strip() else "")
                i += 1
            out.append("")
            i += 1
            continue
        if heading:
            out += [f"{heading.group(1)}.. rubric:: {heading.group(2).strip()}", ""]
            i += 1
            continue
        if line.lstrip().startswith("|") and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1]):
            indent = line[: len(line) - len(line.lstrip())]
            rows = [line] + [r for r in _take_rows(lines, i + 2)]
            out += [f"{indent}.. list-table::", f"{indent}   :header-rows: 1", ""]
            for row in rows:
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                out.append(f"{indent}   * - {cells[0]}")
                out += [f"{indent}     - {c}" for c in cells[1:]]
            out.append("")
            i += 1 + len(rows)
            continue
        out.append(line)
        i += 1
    return out


def _take_rows(lines: list[str], start: int) -> list[str]:
    rows = []
    for row in lines[start:]:
        if not row.lstrip().startswith("|"):
            break
        rows.append(row)
    return rows


def _docstring_markdown(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = _markdown_blocks_to_rst(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _docstring_markdown, priority=400)  # before napoleon (500)
