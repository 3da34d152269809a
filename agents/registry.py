"""Policies by name or by class: a registry in the manner of Gymnasium's ``register`` / ``make``.

A *policy spec* is what ``--policies``, ``--policy``, ``--teacher`` and ``--references`` accept:

- a registered name: ``greedy``, ``genre-cycle-words``, a name a package registered (below), or one registered
  with :func:`register`;
- ``package.module:Class`` (an importable class or factory);
- ``path/to/file.py:Class`` (a file, loaded as a module);

each optionally followed by ``:key=value`` options passed to the constructor (``file.py:MyPolicy:k=3:mode=soft``;
values are read as JSON where they parse, ``3`` an int, ``true`` a bool, else kept as strings). Without options a
class is constructed with no arguments. The LLM takes its options the same way (``llm:adapter=runs/x/iter1/ulrec``)
and ``llm:NAME=ADAPTER`` names a row after an adapter.

Packages register policies through the entry-point group ``ulrec.policies`` (``name = "package.module:Class"``),
loaded the first time a name is looked up; names registered in code win over entry points of the same name.

A spec names code to run: ``file.py:Class`` executes that file. Only give specs you trust (see SECURITY.md).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from agents.policy import Policy

__all__ = ["PolicySpec", "register", "registered", "make", "parse_spec", "check_spec", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "ulrec.policies"


@dataclass(frozen=True)
class PolicySpec:
    """One registered policy.

    Attributes:
        name: The name that specs use.
        entry_point: A callable returning a :class:`Policy` (a class or factory), or ``"module:attr"`` resolved
            when first made.
        kwargs: Default constructor arguments; options of a spec and of :func:`make` override them.
        context: Whether the entry point takes the command's context (``seed``, ``max_history``, ``llm_model``,
            ...) as keyword arguments; the built-in policies do, plug-ins are given only their own options.
        description: One line for ``--help``.
    """

    name: str
    entry_point: Callable[..., Policy] | str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    context: bool = False
    description: str = ""


_REGISTRY: dict[str, PolicySpec] = {}
_ENTRY_POINTS_LOADED = False


def register(name: str, entry_point: Callable[..., Policy] | str, *, kwargs: Mapping[str, Any] | None = None,
             context: bool = False, description: str = "", override: bool = False) -> PolicySpec:
    """Register a policy under ``name`` (then ``make(name)`` and every command's policy options accept it).

    Raises:
        ValueError: ``name`` is not a plain name (letters, digits, ``-``, ``_``) or is taken (pass ``override``).
    """
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"policy name {name!r} may hold only letters, digits, '-' and '_'.")
    if name in _REGISTRY and not override:
        raise ValueError(f"policy {name!r} is already registered; pass override=True to replace it.")
    spec = PolicySpec(name, entry_point, dict(kwargs or {}), context, description)
    _REGISTRY[name] = spec
    return spec


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = PolicySpec(ep.name, ep.value, description=f"from {ep.value} (entry point)")


def registered() -> dict[str, PolicySpec]:
    """Every registered policy (built-in, registered in code, and entry points), by name."""
    _load_entry_points()
    return dict(_REGISTRY)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, Any]]:
    """``(target, attribute, options)`` of a spec: ``("greedy", None, {})``, ``("pkg.mod", "Class", {...})``,
    ``("path/file.py", "Class", {...})``.

    Examples:
        >>> from agents.registry import parse_spec
        >>> parse_spec("greedy")
        ('greedy', None, {})
        >>> parse_spec("examples/my_policy.py:MyPolicy:window=3:mode=soft")
        ('examples/my_policy.py', 'MyPolicy', {'window': 3, 'mode': 'soft'})
        >>> parse_spec("genre-cycle:window=2")
        ('genre-cycle', None, {'window': 2})

    Raises:
        ValueError: The spec is empty or an option is not ``key=value``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a policy spec must be a non-empty string, got {spec!r}.")
    parts = spec.strip().split(":")
    target, rest = parts[0], parts[1:]
    attr = None
    if rest and "=" not in rest[0]:  # module:attr or file.py:attr
        attr, rest = rest[0], rest[1:]
        if not attr.isidentifier():
            raise ValueError(f"policy spec {spec!r}: {attr!r} is not a class or function name.")
    elif target.endswith(".py") or "/" in target:
        raise ValueError(f"policy spec {spec!r} names a file but no class: write {target}:ClassName.")
    options: dict[str, Any] = {}
    for opt in rest:
        key, eq, value = opt.partition("=")
        if not eq or not key:
            raise ValueError(f"policy spec {spec!r}: option {opt!r} is not key=value.")
        options[key] = _parse_value(value)
    return target, attr, options


def check_spec(spec: str) -> None:
    """Check a spec without running any code: its form, and for a plain name that it is registered.

    Raises:
        ValueError: Naming the spec and the registered names.
    """
    target, attr, _ = parse_spec(spec)
    if attr is None and target not in registered():
        raise ValueError(f"unknown policy {target!r}; registered: {', '.join(registered())}; or give "
                         "package.module:Class or path/to/file.py:Class.")


def _load_file(path: str) -> Any:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"policy file {path} not found (a spec path/to/file.py:Class is relative to the current "
                         f"folder, {Path.cwd()}).")
    digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    mod_name = f"ulrec_plugin_{file.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, file)
    if spec is None or spec.loader is None:
        raise ValueError(f"policy file {path} cannot be loaded as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # before exec: dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def _resolve(target: str, attr: str, spec: str) -> Callable[..., Policy]:
    if target.endswith(".py") or "/" in target:
        module = _load_file(target)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"policy spec {spec!r}: cannot import module {target!r} ({e}).") from None
    obj = getattr(module, attr, None)
    if obj is None:
        found = [n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, Policy) and v is not Policy]
        raise ValueError(f"policy spec {spec!r}: {target} has no {attr!r}"
                         + (f"; its Policy classes: {', '.join(found)}." if found else "."))
    if not callable(obj):
        raise ValueError(f"policy spec {spec!r}: {attr} is not a class or function.")
    return obj


def _construct(factory: Callable[..., Policy], kwargs: Mapping[str, Any], spec: str) -> Policy:
    try:
        policy = factory(**kwargs)
    except TypeError as e:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
        raise ValueError(f"policy spec {spec!r}: constructing it with {given} failed: {e}.") from None
    if not isinstance(policy, Policy):
        raise ValueError(f"policy spec {spec!r} made a {type(policy).__name__}, not an agents.Policy; subclass "
                         "agents.Policy and implement _act_batch (see the Policy docstring).")
    return policy


def make(spec: str, context: Mapping[str, Any] | None = None, **kwargs: Any) -> Policy:
    """The policy a spec names, constructed; its ``name`` is the spec's name (a class's own ``name`` when it
    sets one, else the class name), with options appended (``genre-cycle:window=3``).

    Args:
        spec: See the module docstring.
        context: The command's settings (``seed``, ``max_history``, ``window``, ``llm_model``, ...), passed only to
            registered policies that take them (the built-ins).
        **kwargs: Constructor arguments over the registered defaults and the spec's options.

    Raises:
        ValueError: Unknown name, missing file/module/class, bad options, or not a :class:`Policy`.
    """
    target, attr, options = parse_spec(spec)
    label = None
    if attr is None and target == "llm":
        options = _llm_options(options, spec)
        label = options.pop("name", None)
    if attr is None:
        check_spec(spec)
        entry = _REGISTRY[target]
        factory = entry.entry_point
        if isinstance(factory, str):
            mod, _, name = factory.partition(":")
            factory = _resolve(mod, name, spec)
        args = {**entry.kwargs, **options, **kwargs}
        if entry.context:
            args = {**dict(context or {}), **args}
        policy = _construct(factory, args, spec)
        policy.name = target if entry.context else _own_name(policy, target)
    else:
        policy = _construct(_resolve(target, attr, spec), {**options, **kwargs}, spec)
        policy.name = _own_name(policy, attr)
    if label is not None:
        policy.name = str(label)
    elif options:
        policy.name += "".join(f":{k}={v}" for k, v in options.items())
    return policy


#: Options of the ``llm`` spec (``llm:adapter=PATH:temperature=0.5``); ``llm:NAME=ADAPTER`` is short for
#: ``llm:name=NAME:adapter=ADAPTER``.
LLM_OPTIONS = ("name", "model", "adapter", "temperature", "top_p", "batch_size", "dtype", "seed", "engine")


def _llm_options(options: dict[str, Any], spec: str) -> dict[str, Any]:
    unknown = [k for k in options if k not in LLM_OPTIONS]
    if len(unknown) == 1 and "name" not in options and "adapter" not in options:
        key = unknown[0]
        rest = {k: v for k, v in options.items() if k != key}
        return {"name": key, "adapter": str(options[key]), **rest}
    if unknown:
        raise ValueError(f"policy spec {spec!r}: unknown llm option(s) {', '.join(unknown)}; options: "
                         f"{', '.join(LLM_OPTIONS)}, or llm:NAME=ADAPTER.")
    return options


def _own_name(policy: Policy, fallback: str) -> str:
    own = getattr(type(policy), "name", Policy.name)
    return own if own != Policy.name else fallback


# ----------------------------------------------------------------------------------------- built-in policies
def _llm(**kw: Any) -> Policy:
    """The LLM recommender from the command's context (``llm_model``, ``llm_adapter``, ``prompt_format``, ...; a
    ``prompt_format`` of ``None`` is the adapter's; ``engine``: ``transformers`` or ``vllm``) and the spec's own
    options (``model``, ``adapter``, ``temperature``, ``top_p``, ``batch_size``, ``dtype``, ``seed``, ``engine``),
    which win."""
    from agents.llm import LLMRecommender  # torch: only when an LLM is made

    def pick(own: str, ctx: str | None = None, default: Any = None) -> Any:
        value = kw.get(own)
        if value is None and ctx is not None:
            value = kw.get(ctx)
        return default if value is None else value

    return LLMRecommender.from_pretrained(
        model=pick("model", "llm_model"), adapter=pick("adapter", "llm_adapter"),
        batch_size=int(pick("batch_size", "llm_batch_size", 64)), temperature=float(pick("temperature", None, 0.0)),
        top_p=float(pick("top_p", None, 1.0)), seed=int(pick("seed", None, 0)),
        trust_remote_code=bool(kw.get("trust_remote_code")), allow_unsafe_pickle=bool(kw.get("allow_unsafe_pickle")),
        dtype=pick("dtype", None, "auto"), prompt_format=kw.get("prompt_format"),
        engine=str(pick("engine", None, "transformers")),
    )


def _genre_cycle(copy_words: bool, **kw: Any) -> Policy:
    from agents.baselines import GenreCyclePolicy

    keys = ("max_history", "window", "avoid_rated_below", "max_session", "spread")
    opts = {k: kw[k] for k in keys if kw.get(k) is not None}
    return GenreCyclePolicy(copy_words=copy_words, seed=kw.get("seed") or 0, **opts)


from agents.baselines import GreedyPolicy, MMRPolicy, PopularPolicy, RandomPolicy  # noqa: E402
from agents.oracle import OraclePolicy  # noqa: E402

for _name, _factory, _help in (
    ("random", lambda **kw: RandomPolicy(seed=0), "uniformly random unseen items"),
    ("popular", lambda **kw: PopularPolicy(), "the most rated items first"),
    ("greedy", lambda **kw: GreedyPolicy(), "the highest true rating (peeks)"),
    ("mmr", lambda **kw: MMRPolicy(), "rating minus redundancy with the session (peeks)"),
    ("genre-cycle", lambda **kw: _genre_cycle(False, **kw), "genres of the shown history, not of the last items"),
    ("genre-cycle-words", lambda **kw: _genre_cycle(True, **kw), "genre-cycle preferring titles sharing a word"),
    ("oracle", lambda **kw: OraclePolicy(), "plans with the whole simulator (peeks)"),
    ("llm", _llm, "the LLM recommender (llm:adapter=PATH, llm:NAME=ADAPTER)"),
):
    register(_name, _factory, context=True, description=_help)
del _name, _factory, _help

