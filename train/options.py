"""Command-line options built from typed settings dataclasses, as TRL's ``HfArgumentParser`` does.

Each field of a frozen settings dataclass (:class:`ulrec_env.config.EnvConfig`,
:class:`agents.prompting.PromptFormat`, :class:`train.loop.LoopSettings`) becomes one option, so the command
line cannot drift from the settings: ``--field-name`` parses the field's type, its help is the field's
``metadata["help"]`` or its entry in the class docstring's ``Attributes:`` section, and its default is the
field's. A field's metadata may set ``flag`` (the option's name), ``type`` (a parser of the text), ``choices`` and
``metavar``, and ``shown_default`` (how ``--help`` shows the default); ``cli=False`` leaves the field out.

Options are added with ``default=argparse.SUPPRESS``: the parsed namespace holds exactly the options that were
typed (:func:`typed_values`), which is what a preset or a resumed run lays over its own values.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, Iterable

__all__ = ["add_dataclass_options", "typed_values", "field_docs", "parse_optional", "parse_list", "parse_pair",
           "parse_episodes"]

_NONE = ("none", "None", "null")


def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of a class's Google-style docstring."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return out
    base = len(lines[start]) - len(lines[start].lstrip())
    current = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= base:
            break
        text = line.strip()
        if indent == base + 4 and ":" in text:
            name, rest = text.split(":", 1)
            if name.isidentifier():
                current = name
                out[name] = rest.strip()
                continue
        if current is not None:
            out[current] += " " + text
    return out


def parse_optional(inner: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser that reads ``none`` as ``None`` and anything else with ``inner``."""

    def parse(text: str) -> Any:
        return None if text in _NONE else inner(text)

    parse.__name__ = getattr(inner, "__name__", "value")  # argparse names the type in its error
    return parse


def parse_list(text: str) -> tuple[str, ...]:
    """Comma-separated values (``""`` for none)."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def parse_pair(text: str) -> tuple[float, float]:
    """``LOW,HIGH``: two numbers."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}")
    try:
        return (float(parts[0]), float(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from None


def parse_episodes(flag: str = "--episodes") -> Callable[[str], int | str]:
    """A parser of a positive number of sessions or ``all``, whose error names ``flag``."""

    def parse(text: str) -> int | str:
        if text == "all":
            return "all"
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a positive integer or 'all', got {text!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1, got {n}")
        return n

    return parse


def _spec(tp: Any) -> tuple[str, Callable[[str], Any] | None]:
    """``(kind, parser)`` for a field's annotation: kind is ``"bool"``, ``"value"``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is bool:
        return "bool", None
    if tp in (int, float, str):
        return "value", tp
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            kind, inner = _spec(rest[0])
            if kind == "value" and inner is not None:
                return "value", parse_optional(inner)
    if origin is tuple and args == (str, Ellipsis):
        return "value", parse_list
    if origin is tuple and args == (float, float):
        return "value", parse_pair
    return "value", None


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    return "none" if value is None else str(value)


def add_dataclass_options(parser: Any, cls: type, *, skip: Iterable[str] = (), flags: dict[str, str] | None = None,
                          default_text: str = "default: {}") -> None:
    """Add one option per field of the dataclass ``cls`` to ``parser`` (a parser or an argument group).

    Args:
        parser: Where to add the options.
        cls: A dataclass; fields with ``metadata["cli"] is False`` and those named in ``skip`` are left out.
        skip: Field names to leave out.
        flags: ``{field: "--option"}`` to rename options (``metadata["flag"]`` does the same in the class).
        default_text: How the help shows a field's default (``{}`` is replaced by it).

    Raises:
        TypeError: a field's type has no parser and its metadata gives none (``metadata["type"]``).
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    skip = set(skip)
    for f in dataclasses.fields(cls):
        md = f.metadata
        if f.name in skip or md.get("cli") is False:
            continue
        flag = (flags or {}).get(f.name) or md.get("flag") or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        text = (md.get("help") or docs.get(f.name, "")).replace("%", "%%")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": f"{text} ({default_text.format(md.get('shown_default', _default_text(default)))})".strip()}
        kind, parse = _spec(hints[f.name])
        if kind == "bool" and "type" not in md:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        parse = md.get("type", parse)
        if parse is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line parser for {hints[f.name]!r}; give the field "
                            f"metadata={{'type': ...}} or metadata={{'cli': False}}.")
        kw["type"] = parse
        for key in ("choices", "metavar"):
            if key in md:
                kw[key] = md[key]
        parser.add_argument(flag, **kw)


def typed_values(args: argparse.Namespace, cls: type, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of ``cls`` that were typed on the command line (options added by :func:`add_dataclass_options`;
    fields without an option are not read, even when the namespace has an attribute of their name)."""
    skip = set(skip)
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and f.metadata.get("cli") is not False and hasattr(args, f.name)}
