"""Digests of the code a cached artifact depends on (DESIGN.md: a stage's key changes when its code changes).

`code_digest(*roots)` hashes the source of each root (a function, a class, or a bound method) and, transitively,
of every function, class and module of this package that the roots' code refers to by name: globals and
closure variables, and `self.<name>` attributes that resolve on the root's class. A bound method root
(`task.fit`) follows the instance's own class, so overrides count. Module-level constants that a function
reads (an optimizer table, a template list) enter through their repr.

The walk is static and over-approximate: code that is referred to but not run still counts, so a change can
recompute an artifact that did not need it, but a change to code that produced it is never missed — apart
from code reached only through dynamic lookups (getattr with a computed name, registries), which a stage
lists among its roots explicitly.
"""
from __future__ import annotations

import hashlib
import inspect
import re
import types
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

PACKAGE = __name__.split(".")[0]
_SIMPLE = (int, float, str, bytes, bool, type(None), tuple, list, dict, frozenset, set)


def code_digest(*roots: Any) -> str:
    """One hex digest of the code behind `roots` (order-independent)."""
    parts: dict[str, str] = {}
    for root in roots:
        _visit(root, None, parts)
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(parts):
        h.update(name.encode())
        h.update(b"\0")
        h.update(parts[name].encode())
        h.update(b"\0")
    return h.hexdigest()


def source_of(obj: Any) -> str:
    """The source text a digest uses for `obj` (module-level so a test can stand in a changed version)."""
    return _source(obj)


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        # Generated code (a dataclass's __init__/__eq__) has no file: it follows from its class's source, which
        # is hashed; only a stable name stands in (a repr would carry a memory address).
        return f"<no source: {getattr(obj, '__qualname__', type(obj).__qualname__)}>"


@lru_cache(maxsize=None)
def _module_source(name: str, file: str) -> str:
    return Path(file).read_text(encoding="utf-8", errors="replace")


def _ours(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _visit(obj: Any, owner: type | None, parts: dict[str, str]) -> None:
    if isinstance(obj, partial):
        _visit(obj.func, owner, parts)
        for i, arg in enumerate((*obj.args, *obj.keywords.values())):
            _visit_value(arg, parts, f"{_name(obj.func)}:partial{i}")
        return
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        for accessor in (obj.fget, obj.fset):
            if accessor is not None:
                _visit(accessor, owner, parts)
        return
    if inspect.ismethod(obj):
        bound = obj.__self__
        owner = bound if inspect.isclass(bound) else type(bound)
        obj = obj.__func__
    if inspect.isclass(obj):
        _visit_class(obj, parts)
    elif inspect.isfunction(obj):
        _visit_function(obj, owner, parts)
    else:
        _visit_value(obj, parts, "root")


def _visit_class(cls: type, parts: dict[str, str]) -> None:
    if not _ours(cls) or _name(cls) in parts:
        return
    parts[_name(cls)] = source_of(cls)
    for base in cls.__bases__:
        _visit_class(base, parts)
    for value in vars(cls).values():
        if isinstance(value, (types.FunctionType, staticmethod, classmethod, property)):
            _visit(value, cls, parts)


def _visit_function(func: types.FunctionType, owner: type | None, parts: dict[str, str]) -> None:
    if not _ours(func):
        return
    key = _name(func) + (f"@{_name(owner)}" if owner is not None else "")
    if key in parts:
        return
    parts[key] = source_of(func)
    for code in _code_objects(func.__code__):
        for name in code.co_names:
            if name in func.__globals__:
                _visit_value(func.__globals__[name], parts, f"{func.__module__}.{name}")
            if owner is not None:
                attr = _static_attr(owner, name)
                if attr is not None:
                    _visit(attr, owner, parts)
    for var, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
        try:
            _visit_value(cell.cell_contents, parts, f"{_name(func)}:{var}")
        except ValueError:  # an empty cell
            pass


def _static_attr(owner: type, name: str) -> Any:
    attr = inspect.getattr_static(owner, name, None)
    if isinstance(attr, (types.FunctionType, staticmethod, classmethod, property)):
        return attr
    return None


def _visit_value(value: Any, parts: dict[str, str], label: str) -> None:
    """A name's value: code of ours is followed; plain constants enter by repr under the name that holds them."""
    if inspect.isclass(value) or inspect.isfunction(value) or isinstance(value, partial):
        _visit(value, None, parts)
    elif isinstance(value, types.ModuleType):
        file = getattr(value, "__file__", None)
        if file and (value.__name__ == PACKAGE or value.__name__.startswith(PACKAGE + ".")):
            parts.setdefault(value.__name__, _module_source(value.__name__, file))
    elif isinstance(value, _SIMPLE):
        text = _stable_repr(value)
        if len(text) <= 10_000:
            parts.setdefault(f"const:{label}", text)


def _stable_repr(value: Any) -> str:
    """repr that is the same in every process: sets sorted (string hashing is salted per process) and memory
    addresses dropped."""
    if isinstance(value, (set, frozenset)):
        text = "{" + ", ".join(sorted(_stable_repr(v) for v in value)) + "}"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{_stable_repr(k)}: {_stable_repr(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_stable_repr(v) for v in value) + "]"
    else:
        text = repr(value)
    return _ADDRESS.sub("", text)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
