"""Problems and their messages: every failure becomes one line ``path: problem (got value);
allowed: what`` (with a did-you-mean for unknown keys and choices), and all lines of a
configuration are raised together as one :class:`ConfigError`. Pydantic's errors are translated
here, including the plain-words description of what a field accepts; :func:`relocate` moves a
problem of a merged configuration to the profile key that wrote the value."""

import functools
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

from annotated_types import Len
from pydantic import BaseModel, TypeAdapter, ValidationError

from ...errors import UserError, close_match  # close_match: the did-you-mean of keys and choices (and model names)
from ..config import has_path

MISSING = object()


class ConfigError(UserError, ValueError):
    """A configuration broke the schema; ``problems`` holds one line per failure."""

    def __init__(self, header: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{header} ({len(problems)} problem{'s' * (len(problems) > 1)}):\n"
                         + "\n".join(f"  - {p}" for p in problems))


class Problem(NamedTuple):
    loc: tuple  # key path inside the checked configuration
    problem: str
    allowed: str
    value: Any = MISSING
    hint: str | None = None  # the closest allowed key or choice

    def line(self) -> str:
        path = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in self.loc).lstrip(".") or "<root>"
        got = "" if self.value is MISSING else f" (got {_short(self.value)})"
        hint = f" did you mean {self.hint!r}?" if self.hint else ""
        return f"{path}: {self.problem}{got};{hint} allowed: {self.allowed}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def raise_problems(problems: list[Problem], header: str) -> None:
    lines = list(dict.fromkeys(p.line() for p in problems))  # merged configs repeat shared problems
    if lines:
        raise ConfigError(header, lines)


def _unwrap(tp):
    """``tp`` without ``Annotated`` constraints and ``| None``: the model or container inside."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType):
            tp = next(a for a in get_args(tp) if a is not NoneType)
        else:
            return tp


def _type_at(tp, loc):
    """The annotation validating the value at ``loc`` under ``tp`` (a model or container type)."""
    for key in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(key)
            if field is None:
                return None
            tp = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        else:
            tp = get_args(tp)[-1] if get_args(tp) else Any  # list item / mapping value
    return tp


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
          Any: "any value"}


def describe_type(tp, metadata=()) -> str:
    """Plain words for what ``tp`` accepts, e.g. ``a number > 0 and < 1``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return describe_type(args[0], (*args[1:], *metadata))
    if origin in (Union, UnionType):
        return describe_type(next(a for a in args if a is not NoneType), metadata) + " or null"
    if origin is Literal:
        return "one of " + " | ".join(map(str, args))
    bounds = [f"{sym} {getattr(m, attr)}" for m in metadata for attr, sym in _BOUNDS if hasattr(m, attr)]
    bounds += [f"matching {m.pattern}" for m in metadata if getattr(m, "pattern", None)]
    if origin is list:
        low = next((m.min_length for m in metadata if isinstance(m, Len)), 0)
        high = next((m.max_length for m in metadata if isinstance(m, Len)), None)
        size = f"a list of {low} items" if low == high else "a non-empty list" if low else "a list"
        return f"{size}, each {describe_type(args[0])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping with keys " + ", ".join(sorted(tp.model_fields))
    return " ".join([_NAMES.get(origin or tp, str(tp)), " and ".join(bounds)]).rstrip()


def _from_pydantic(tp, err: dict) -> Problem:
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input", MISSING)
    if kind == "extra_forbidden":
        known = sorted(_unwrap(_type_at(tp, loc[:-1])).model_fields)
        return Problem(loc, "unknown key", ", ".join(known), value, close_match(loc[-1], known))
    target = _type_at(tp, loc)
    hint = close_match(value, get_args(_unwrap(target))) if kind == "literal_error" else None
    if kind == "missing":
        problem, value = "required key missing", MISSING
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        problem = "out of range"
    elif kind in ("too_short", "too_long"):
        problem = "wrong length"
    elif kind == "literal_error":
        problem = "not an allowed choice"
    elif kind.endswith("_type"):
        problem = "wrong type"
    else:
        problem = err["msg"].lower()
    return Problem(loc, problem, describe_type(target), value, hint)


@functools.cache
def _adapter(tp) -> TypeAdapter:
    return TypeAdapter(tp)


def check_value(tp, value) -> tuple[list[Problem], Any]:
    """(problems, validated value or None) of ``value`` against ``tp``."""
    try:
        return [], _adapter(tp).validate_python(value)
    except ValidationError as e:
        return [_from_pydantic(tp, err) for err in e.errors()], None


def relocate(problems, layers, fallback) -> list[Problem]:
    """Problems of a merged configuration, each moved to the params key that wrote the value.

    ``layers``: ``(under, path, source)`` in merge priority: a problem at ``under + rest`` belongs
    to ``path + rest`` when ``source`` holds ``rest``; else (a missing key) to ``fallback + loc``.
    """
    out = []
    for p in problems:
        for under, path, source in layers:
            rest = p.loc[len(under):]
            if p.loc[:len(under)] == under and has_path(source, rest):
                out.append(p._replace(loc=(*path, *rest)))
                break
        else:
            out.append(p._replace(loc=(*fallback, *p.loc)))
    return out
