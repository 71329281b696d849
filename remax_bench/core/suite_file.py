"""Reading a suite file: YAML with two fixes for configs, validation against the schema in
``remax_bench.core.config``, and every problem as one line naming the field, what was expected and what was
given (``SuiteError``).

Types are strict: a YAML value must already have the right type (``"24"`` is not an integer, ``yes`` is not a
number), so a quoted or mistyped value is reported instead of silently converted. The YAML reader accepts
``1e-4`` as a number (plain YAML 1.1 would read it as a string) and rejects duplicate keys (plain YAML keeps
the last one silently, which would hide one of two settings).

Any field can also be set from the command line, ``--set shared.kl_coef=0.1 --set seeds=[0,1,2]``: a dotted
path and a YAML value, put into the suite file's data before validation, so an override meets the same schema
and the same messages as the file itself.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from remax_bench.core import algorithms
from remax_bench.core.config import SUITES_DIR, DataSource, Judge, Shared, Suite, SuiteError, _yaml_scalar


# -- error messages --------------------------------------------------------------------------------
def _given(value: Any) -> str:
    """What the suite gave, in YAML terms, with its type where that explains a type error."""
    if isinstance(value, bool) or value is None:
        return f"{_yaml_scalar(value)}" + (" (a boolean)" if isinstance(value, bool) else "")
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, dict):
        keys = ", ".join(str(k) for k in list(value)[:6])
        return f"a mapping with keys {keys}" if value else "an empty mapping"
    if isinstance(value, list):
        text = repr(value)
        return f"a list {text}" if len(text) <= 60 else f"a list of {len(value)} items"
    return repr(value)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _bounds(metadata: list) -> str:
    lower = upper = None
    for m in metadata:
        if getattr(m, "gt", None) is not None:
            lower = f"> {m.gt}", f"({m.gt}"
        if getattr(m, "ge", None) is not None:
            lower = f">= {m.ge}", f"[{m.ge}"
        if getattr(m, "lt", None) is not None:
            upper = f"< {m.lt}", f"{m.lt})"
        if getattr(m, "le", None) is not None:
            upper = f"<= {m.le}", f"{m.le}]"
    if lower and upper:
        return f" in {lower[1]}, {upper[1]}"
    if lower or upper:
        return " " + (lower or upper)[0]
    return ""


def _expected(annotation: Any, metadata: list) -> str:
    """Plain-words description of what a field accepts, from its type and constraints."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        text = " or ".join(_expected(a, metadata) for a in options)
        return text + (" or null" if len(options) < len(args) else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return "a list of " + {int: "integers", str: "strings"}.get(args[0], _expected(args[0], []))
    if annotation is DataSource:
        return ("a data source ('synthetic', a local .jsonl/.json/.parquet path or a Hugging Face dataset id, "
                "or a mapping with keys " + ", ".join(DataSource.model_fields) + ")")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping with keys " + ", ".join(annotation.model_fields)
    base = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(annotation)
    if base is None:
        return str(annotation)
    return base + ("" if annotation is bool else _bounds(metadata))


def _field_at(loc: tuple) -> tuple[Any, list] | None:
    """(annotation, constraints) of the field an error location points at; list items give the item type."""
    model: type[BaseModel] | None = Suite
    annotation, metadata = None, []
    for part in loc:
        if isinstance(part, int):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if get_origin(annotation) in (Union, types.UnionType) and args:
                args = get_args(args[0])
            annotation, metadata = (args[0] if args else None), []
            continue
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        annotation, metadata = info.annotation, info.metadata
        model = _submodel(annotation)
    return (annotation, metadata) if annotation is not None else None


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith("function-"):
            out += f".{part}" if out else str(part)
    return out


def _describe(err: dict) -> list[str]:
    loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
    where, kind, given = _path(loc), err["type"], err.get("input")
    field = _field_at(loc)
    expected = _expected(*field) if field else None
    if kind == "missing":
        if where == "models.policy":
            return [f"{where}: a model is required (a tiny: spec, a Hugging Face id or a local path)"]
        return [f"{where}: required; expected {expected}" if expected else f"{where}: required"]
    if kind == "value_error":
        # Our validators write "relative.path: message"; the path is relative to the model that raised it.
        lines = []
        for line in str(err["msg"]).removeprefix("Value error, ").splitlines():
            rel, sep, text = line.partition(": ")
            if sep and re.fullmatch(r"[A-Za-z_][\w.]*", rel):
                lines.append(f"{where + '.' if where else ''}{rel}: {text}")
            else:
                lines.append(f"{where}: {line}" if where else line)
        return lines
    if kind == "extra_forbidden":
        return [f"{where}: unknown key"]
    if kind == "string_pattern_mismatch" and where == "name":
        return [f"name: expected a name of letters, digits, '_', '.' and '-' (it names the results folder), "
                f"got {given!r}"]
    if expected is None:
        return [f"{where}: {err['msg']}, got {_given(given)}"]
    return [f"{where}: expected {expected}, got {_given(given)}"]


def _check_matched(raw: dict) -> list[str]:
    """An algorithm block that sets a shared key would break the matched comparison."""
    errors = []
    for algo in algorithms.NAMES:
        block = raw.get(algo)
        if isinstance(block, dict):
            for key in block:
                if key in Shared.model_fields:
                    errors.append(
                        f"{algo}.{key}: cannot override shared.{key} in an algorithm block; that would break the "
                        f"matched comparison (set it in shared: for all algorithms)"
                    )
    return errors


def _unknown_keys(raw: Any, model: type[BaseModel], path: str) -> list[str]:
    """Unknown keys at every level, each with a did-you-mean (or the list of allowed keys)."""
    if not isinstance(raw, dict):
        return []
    errors = []
    allowed = list(model.model_fields)
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        if key in allowed:
            sub = _submodel(model.model_fields[key].annotation)
            if sub is not None:
                errors.extend(_unknown_keys(value, sub, where))
            continue
        if path in algorithms.REGISTRY and key in Shared.model_fields:
            continue  # reported by _check_matched with the clearer message
        if model is Judge and str(key) in ("api_key", "key", "openai_api_key"):
            errors.append(f"{where}: a key is never part of a suite (suites are recorded in every manifest); "
                          f"put it in an environment variable and name that variable in {path}.api_key_env")
            continue
        if path in algorithms.REGISTRY and key == "kl_mode":
            errors.append(f"{where}: unknown key; the KL treatment is shared.kl (estimator, placement, shape), the "
                          f"same for every algorithm; to keep this algorithm's paper's own, set {path}.kl_override: "
                          "paper (its comparison is then flagged as not matched)")
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(allowed)}"
        errors.append(f"{where}: unknown key{hint}")
    return errors


def _empty_blocks_to_defaults(raw: Any, model: type[BaseModel]) -> Any:
    """`remax:` with every line below it commented out is YAML null; read it as an empty block (defaults)."""
    if not isinstance(raw, dict):
        return raw
    out = {}
    for key, value in raw.items():
        info = model.model_fields.get(key) if isinstance(key, str) else None
        sub = _submodel(info.annotation) if info else None
        if sub is not None and sub is not DataSource:
            nullable = type(None) in get_args(info.annotation)
            value = {} if value is None and not nullable else _empty_blocks_to_defaults(value, sub)
        out[key] = value
    return out


# -- loading ---------------------------------------------------------------------------------------
class _SuiteLoader(yaml.SafeLoader):
    """Safe YAML with two fixes for configs: `1e-4` is a number, and a key given twice is an error."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges are meant to be overridden
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (first given at line {seen[key] + 1})",
                            key_node.start_mark,
                        )
                    seen[key] = key_node.start_mark.line
                except TypeError:  # an unhashable key: the base class reports it
                    continue
        return super().construct_mapping(node, deep=deep)


_SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def validate_suite(raw: Any, source: str = "<suite>") -> Suite:
    """A Suite from already-parsed data (a dict), with every problem reported as one SuiteError."""
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: the top level must be a mapping of keys (name, models, shared, ...), "
                         f"got {_given(raw)}")
    errors = _check_matched(raw) + _unknown_keys(raw, Suite, "")
    if errors:
        raise SuiteError("\n".join(errors))
    try:
        return Suite.model_validate(_empty_blocks_to_defaults(raw, Suite))
    except ValidationError as err:
        lines = [line for e in err.errors() for line in _describe(e)]
        raise SuiteError("\n".join(dict.fromkeys(lines))) from None


# -- command-line overrides ------------------------------------------------------------------------
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``shared.kl_coef=0.1`` as (["shared", "kl_coef"], 0.1); the value is read as YAML, as in a suite file."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise SuiteError(f"--set {text}: expected KEY=VALUE with a dotted KEY, e.g. --set shared.kl_coef=0.1")
    if not _DOTTED.fullmatch(key):
        raise SuiteError(f"--set {text}: expected a dotted path of field names before '=', e.g. shared.kl_coef, "
                         f"got {key!r}")
    try:
        parsed = yaml.load(value, Loader=_SuiteLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise SuiteError(f"--set {text}: the value is not valid YAML: {getattr(err, 'problem', None) or err}") from None
    return key.split("."), parsed


def apply_overrides(raw: Any, overrides) -> Any:
    """The suite file's data with each ``KEY=VALUE`` set in turn (a later one wins); blocks the file leaves out
    are created. Validation comes after, on the result."""
    if not overrides or not isinstance(raw, dict):
        return raw
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:  # absent, or an empty block (`remax:` with nothing below it)
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[:depth + 1])
                raise SuiteError(f"--set {text}: {where} is {_given(child)}, not a block of fields, so it has no "
                                 f"field {path[depth + 1]!r}")
            node = child
        node[path[-1]] = value
    return raw


def read_suite_data(text: str, source: str = "<suite>") -> Any:
    """The data of a suite file's YAML text (not yet validated); ``source`` names it in messages."""
    try:
        return yaml.load(text, Loader=_SuiteLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(f"{source}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None


def load_suite_text(text: str, source: str = "<suite>", overrides=()) -> Suite:
    """A Suite from YAML text and command-line overrides; ``source`` names it in messages."""
    return validate_suite(apply_overrides(read_suite_data(text, source), overrides), source)


def resolve_suite_path(path_or_name: str | Path) -> Path:
    """A YAML path as given, or a bare name (``tiny``) as <repo>/suites/<name>.yaml."""
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") or path.is_file() or len(path.parts) > 1:
        return path
    return SUITES_DIR / f"{path_or_name}.yaml"


def load_suite(path_or_name: str | Path, overrides=()) -> Suite:
    """A suite from a YAML path, or a bare name (``tiny``) in the suites/ folder, with ``--set`` overrides."""
    path = resolve_suite_path(path_or_name)
    if not path.is_file():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
        raise SuiteError(f"suite file {path} not found; expected a YAML path or one of the names {known}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"suite file {path} cannot be read: {err}") from None
    return load_suite_text(text, str(path), overrides)


def to_yaml(suite: Suite) -> str:
    """The resolved suite (every default filled in) as YAML, in the schema's key order."""
    return yaml.safe_dump(suite.resolved(), sort_keys=False, default_flow_style=False, width=120)
