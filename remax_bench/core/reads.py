"""What a stage reads of its suite, recorded as it reads it.

A stage's identity is the suite fields it declares it reads (remax_bench.core.identity). A declaration that
misses a field would let a re-run keep a result that field changed, so the stage reads its suite through a
``ReadView``: every field it touches is recorded by its dotted name (``shared.max_prompt_length``), and a
field outside the declaration is reported at the moment it is read.

The view is the suite for the code that reads it: fields, sub-blocks (views themselves), properties and
methods of the schema (run with the view as ``self``, so the fields they read are recorded too) and
``isinstance``. pydantic's own methods (``model_dump``, ``model_copy``) read a whole block and are recorded
as such.
"""

from __future__ import annotations

import inspect
import types
from typing import Callable

from pydantic import BaseModel


def covers(declared: tuple[str, ...] | list[str], field: str) -> bool:
    """Whether a declaration (dotted prefixes: ``sft`` is the whole block) covers a dotted field name."""
    return any(field == prefix or field.startswith(prefix + ".") for prefix in declared)


class ReadLog:
    """The fields read through the views of one suite, and what to do with one outside ``declared``."""

    def __init__(self, declared: tuple[str, ...] | list[str], on_undeclared: Callable[[str], None] | None = None):
        self.declared = tuple(declared)
        self.on_undeclared = on_undeclared
        self.fields: set[str] = set()
        self.undeclared: set[str] = set()

    def record(self, field: str) -> None:
        if field in self.fields:
            return
        self.fields.add(field)
        if not covers(self.declared, field):
            self.undeclared.add(field)
            if self.on_undeclared is not None:
                self.on_undeclared(field)


def _defined_by_pydantic(cls: type, name: str) -> bool:
    """Whether ``cls.name`` is pydantic's own (model_dump, ...) rather than the schema's."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass.__module__.startswith("pydantic") or klass is object
    return True


class ReadView:
    """A read-only view of a pydantic model that records the fields read through it in a ReadLog."""

    __slots__ = ("_model", "_path", "_log")

    def __init__(self, model: BaseModel, log: ReadLog, path: str = ""):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_log", log)

    @property
    def __class__(self):  # isinstance(view, Shared) holds, as for the model itself
        return type(object.__getattribute__(self, "_model"))

    def __getattr__(self, name: str):
        model, path, log = (object.__getattribute__(self, a) for a in ("_model", "_path", "_log"))
        cls = type(model)
        if name in cls.model_fields:
            field = f"{path}.{name}" if path else name
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                return ReadView(value, log, field)  # reading a block reads nothing yet; its fields are recorded
            log.record(field)
            return value
        static = inspect.getattr_static(cls, name, None)
        if static is None:
            raise AttributeError(f"{cls.__name__!r} has no attribute {name!r}")
        if not _defined_by_pydantic(cls, name):
            if isinstance(static, property):
                return static.fget(self)
            if inspect.isfunction(static):
                return types.MethodType(static, self)
        log.record(path or "(the whole suite)")  # pydantic's methods see every field of the block
        return getattr(model, name)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"the suite is read-only in a stage (tried to set {name!r})")

    def __repr__(self) -> str:
        return f"ReadView({object.__getattribute__(self, '_path') or 'suite'})"


def unwrap(value):
    """The model behind a view (a view's fields are the model's own); anything else as it is."""
    if type(value) is ReadView:  # type() sees through the __class__ property
        return object.__getattribute__(value, "_model")
    return value
