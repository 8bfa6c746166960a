"""Reading a profile: TOML text -> dict -> models -> whole-profile rules.

Every failure on the way becomes a ConfigError that names the file, the TOML key path
(``instruments[2].esp300.axes[0].high_limit``) and a fix written for the person editing the file.
A pydantic traceback would name Python classes and union tags, which means nothing at the bench.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from daqbridge.config._models import (
    DRIVERS,
    INSTRUMENT_CLASSES,
    Profile,
)
from daqbridge.config._validate import (
    Issue,
    PortChecker,
    ProfileInvalid,
    raise_for_issues,
    sentence,
    validate_profile,
)
from daqbridge.errors import ConfigError

ProfileSource = str | os.PathLike | Mapping[str, Any] | None

_TOML_POS_RE = re.compile(r"\(at line (\d+), column (\d+)\)")

MAX_NESTING = 16
"""Deepest nesting of arrays and tables a profile may have. The models' deepest key has five
levels (``instruments[0].esp300.axes[1].name``). tomllib recurses once per level, so a few
hundred levels end in a RecursionError; and everything after parsing (pydantic, messages, the
migration's writer) walks the data again."""

# Keys people bring from the legacy format or other tools, and where they went.
_RENAMED: dict[str, str] = {
    "baudrate": "baud_rate",
    "baud": "baud_rate",
    "type": "driver",
    "device_addresses": "the driver table: elliptec.addresses = [{ address = '2', name = ... }]",
    "polling_rate": "polling_rate_hz",
    "poll_rate_hz": "polling_rate_hz",
    "visa_resource": "resource",
    "address": "resource (VISA) or port (serial)",
    "camera_name": "camera",
    "pv_prefix": "prefix",
}


# --- public entry points ------------------------------------------------------------------------


def load_profile(
    source: ProfileSource = None, *, device_cache: PortChecker | None = None
) -> Profile:
    """Read, check and return a profile; raise ProfileInvalid (a ConfigError) on any error.

    ``source``: a path, TOML text, an already parsed mapping, or None for the embedded simulated
    lab. ``device_cache``: anything with ``exists(port) -> bool``; given, missing serial ports are
    errors. Warnings do not stop loading; they are kept in ``profile.warnings``.
    """
    data, file, path, text = read_source(source)
    profile = profile_from_dict(data, file=file, path=path, text=text)
    issues = [_with_line(i, text) for i in validate_profile(profile, device_cache=device_cache)]
    profile._warnings = list(raise_for_issues(issues))
    return profile


def check_profile(
    source: ProfileSource = None, *, device_cache: PortChecker | None = None
) -> tuple[Profile | None, list[Issue]]:
    """Every issue of a profile, errors and warnings, returned instead of raised.

    The profile is None when it does not even match the models. Unreadable files still raise
    ConfigError (there is nothing to list). This is what ``daqbridge config check`` shows.
    """
    data, file, path, text = read_source(source)
    try:
        profile = profile_from_dict(data, file=file, path=path, text=text)
    except ProfileInvalid as exc:
        return None, list(exc.issues)
    issues = [_with_line(i, text) for i in validate_profile(profile, device_cache=device_cache)]
    profile._warnings = [i for i in issues if i.severity == "warning"]
    return profile, issues


def parse_profile(source: ProfileSource = None) -> Profile:
    """Read a profile and check it against the models only (no whole-profile rules)."""
    data, file, path, text = read_source(source)
    return profile_from_dict(data, file=file, path=path, text=text)


def read_source(
    source: ProfileSource,
) -> tuple[dict[str, Any], str, Path | None, str | None]:
    """(parsed TOML, file label for messages, path or None, TOML text or None)."""
    if source is None:
        source = Profile.default_path()
    if isinstance(source, Mapping):
        return dict(source), "<mapping>", None, None
    if isinstance(source, bytes):
        text = _decode(source, "<bytes>")
        return parse_toml(text, "<bytes>"), "<bytes>", None, text
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
        path = Path(os.fspath(source))
        text = _read_file(path)
        return parse_toml(text, str(path)), str(path), path.resolve(), text
    if isinstance(source, str):
        return parse_toml(source, "<string>"), "<string>", None, source
    raise ConfigError(
        f"cannot read a profile from a {type(source).__name__}",
        fix="pass a path, TOML text, a mapping, or None for the embedded simulated lab.",
    )


def _looks_like_path(text: str) -> bool:
    if "\n" in text or not text.strip():
        return False
    if text.endswith(".toml") or os.path.exists(text):
        return True
    return not re.search(r"[=\[]", text)


def _decode(raw: bytes, file: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8 text: byte {raw[exc.start]:#04x} at line {line}",
            file=file,
            key=str(line),
            fix="save the profile as UTF-8 (TOML files must be UTF-8).",
        ) from None


def _read_file(path: Path) -> str:
    fix_path = (
        "check the path; `daqbridge config check` with no file checks the embedded simulated "
        f"lab ({Profile.default_path()}), and profiles/lab.example.toml is a commented template."
    )
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            # a FIFO or a device node would block or never end (/dev/stdin, /dev/zero)
            raise ConfigError(
                "is not a regular file", file=str(path), fix="give the path of a .toml file."
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("profile file not found", file=str(path), fix=fix_path) from None
    except IsADirectoryError:
        raise ConfigError(
            "is a directory, not a profile file", file=str(path), fix=fix_path
        ) from None
    except PermissionError:
        raise ConfigError(
            "profile file is not readable (permission denied)",
            file=str(path),
            fix="make it readable for this user (chmod/chown) or copy it somewhere readable.",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the profile: {exc.strerror or exc}", file=str(path), fix=fix_path
        ) from None
    return _decode(raw, str(path))


def parse_toml(text: str, file: str = "<string>") -> dict[str, Any]:
    """TOML text -> dict, syntax errors as ConfigError at ``file:line:column``; nesting deeper
    than :data:`MAX_NESTING` is an error too (``nesting``), not a RecursionError."""
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ProfileInvalid([_nesting_issue(file, None, _deepest_line(text))]) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOML_POS_RE.search(message)
        what = _TOML_POS_RE.sub("", message).strip()
        if m is None:
            issue = Issue(
                "error",
                "toml-syntax",
                f"TOML syntax error: {what}.",
                "complete the file (an unclosed table, array or string?).",
                file=file,
            )
            raise ProfileInvalid([issue]) from None
        line, col = int(m.group(1)), int(m.group(2))
        lines = text.splitlines()
        shown = lines[line - 1] if 0 < line <= len(lines) else ""
        pointer = f"\n    {shown}\n    {' ' * max(0, col - 1)}^\n" if shown.strip() else ""
        issue = Issue(
            "error",
            "toml-syntax",
            f"TOML syntax error at column {col}: {what}.{pointer}",
            _toml_fix(what),
            file=file,
            line=line,
        )
        raise ProfileInvalid([issue]) from None
    deep = _too_deep(data)
    if deep is not None:
        line = locate_key(text, deep)
        raise ProfileInvalid([_nesting_issue(file, format_key(deep), line)])
    return data


def _too_deep(data: Mapping[str, Any]) -> list | None:
    """The key path of the first value nested deeper than MAX_NESTING, found without
    recursion (the data may be as deep as the parser could go)."""
    level: list[tuple[list, Any]] = [([], data)]
    for _ in range(MAX_NESTING):
        children: list[tuple[list, Any]] = []
        for path, node in level:
            if isinstance(node, Mapping):
                children.extend(([*path, k], v) for k, v in node.items())
            elif isinstance(node, list):
                children.extend(([*path, i], v) for i, v in enumerate(node))
        if not children:
            return None
        level = children
    return next((path for path, node in level if isinstance(node, Mapping | list)), None)


def _nesting_issue(file: str, key: str | None, line: int | None) -> Issue:
    return Issue(
        "error",
        "nesting",
        f"arrays or tables are nested more than {MAX_NESTING} levels deep; no profile key "
        "nests that deep.",
        "remove the extra brackets: values are numbers, strings, booleans, arrays of them, or "
        "the tables docs/profile.md lists.",
        key=key,
        file=file,
        line=line,
    )


def _deepest_line(text: str) -> int | None:
    """Best effort: the line with the most opening brackets (tomllib gave up without one)."""
    counts = [line.count("[") + line.count("{") for line in text.splitlines()]
    return counts.index(max(counts)) + 1 if counts and max(counts) else None


def _toml_fix(what: str) -> str:
    low = what.lower()
    if "overwrite" in low or "duplicate" in low or "redefine" in low:
        return (
            "a key or table is defined twice: remove one (use [[instruments]] for each "
            "instrument, [instruments.<driver>] once after it)."
        )
    if "invalid value" in low or "expected" in low and "value" in low:
        return 'quote strings (port = "/dev/ttyUSB0"), write true/false in lower case.'
    if "unclosed" in low or "end of document" in low:
        return "close the string, array or inline table that starts here."
    return "correct the TOML syntax at this position (https://toml.io/en/v1.0.0)."


def profile_from_dict(
    data: Mapping[str, Any],
    *,
    file: str = "<mapping>",
    path: Path | None = None,
    text: str | None = None,
) -> Profile:
    """Validate parsed TOML against the models; pydantic errors become one ProfileInvalid.

    ``text`` (the TOML the data came from) lets messages give line numbers.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"a profile is a table of tables, got {type(data).__name__}",
            file=file,
            fix="start from profiles/lab.example.toml.",
        )
    try:
        profile = Profile.model_validate(dict(data))
    except ValidationError as exc:
        issues = [_with_line(i, text) for i in issues_from_validation(exc, data, file)]
        raise ProfileInvalid(issues) from None
    except (TypeError, ValueError, RecursionError) as exc:
        # pydantic converts validator errors itself; this is for inputs no TOML file can hold
        # (e.g. self-referencing mappings handed in from Python).
        raise ConfigError(
            f"cannot validate the profile: {type(exc).__name__}: {exc}",
            file=file,
            fix="pass plain TOML data (tables, arrays, strings, numbers, booleans).",
        ) from None
    profile._source = path
    profile._label = file
    return profile


# --- pydantic errors -> issues ------------------------------------------------------------------


def issues_from_validation(exc: ValidationError, data: Mapping[str, Any], file: str) -> list[Issue]:
    issues = []
    for err in exc.errors(include_url=False):
        try:
            issues.append(_issue(err, data, file))
        except Exception as bug:  # never let a message builder hide the real problem
            issues.append(
                Issue(
                    "error",
                    "schema",
                    f"{err.get('msg', 'invalid value')} (at {err.get('loc')})",
                    f"see docs/profile.md ({type(bug).__name__} while describing it)",
                    file=file,
                )
            )
    return issues


def _strip_tags(loc: tuple, data: Mapping[str, Any]) -> list:
    """Drop the discriminator tag pydantic inserts after ``instruments[i]``."""
    out = list(loc)
    if len(out) >= 3 and out[0] == "instruments" and isinstance(out[1], int):
        entry = _at(data, out[:2])
        if isinstance(entry, Mapping) and entry.get("driver") == out[2] and out[2] in DRIVERS:
            del out[2]
    return out


def _at(data: Any, loc: list) -> Any:
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def format_key(loc: list) -> str:
    """``['instruments', 2, 'port']`` -> ``instruments[2].port``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            part = str(part)
            if not re.fullmatch(r"[A-Za-z0-9_-]+", part):
                part = repr(part)
            text += f".{part}" if text else part
    return text


def split_key(key: str) -> list:
    """``axes[1].number`` -> ``['axes', 1, 'number']``."""
    parts: list = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", key):
        parts.append(int(index) if index else name)
    return parts


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _resolve(loc: list, data: Mapping[str, Any]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model owning the last key of ``loc``, and that key's FieldInfo (None if unknown)."""
    current: Any = Profile
    owner: type[BaseModel] | None = None
    info: FieldInfo | None = None
    for n, part in enumerate(loc):
        current = _unwrap(current)
        if isinstance(part, int):
            if typing.get_origin(current) is list:
                current = typing.get_args(current)[0]
                if loc[:1] == ["instruments"] and n == 1:
                    driver = _at(data, loc[:2] + ["driver"])
                    current = INSTRUMENT_CLASSES.get(driver) if isinstance(driver, str) else None
                continue
            return owner, None
        if isinstance(current, type) and issubclass(current, BaseModel):
            owner = current
            info = current.model_fields.get(part)
            if info is None:
                return owner, None
            current = info.annotation
        else:
            return owner, None
    return owner, info


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the string {shown!r}"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, Mapping):
        return "a table"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _instrument_context(loc: list, data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    if len(loc) >= 2 and loc[0] == "instruments" and isinstance(loc[1], int):
        entry = _at(data, loc[:2])
        if isinstance(entry, Mapping):
            ident = entry.get("id")
            hw = next(
                (entry[k] for k in ("port", "resource", "camera", "prefix") if k in entry), None
            )
            return (
                ident if isinstance(ident, str) else None,
                hw if isinstance(hw, str) else None,
            )
    return None, None


def _issue(err: Mapping[str, Any], data: Mapping[str, Any], file: str) -> Issue:
    kind = err["type"]
    loc = _strip_tags(tuple(err["loc"]), data)
    ctx = err.get("ctx") or {}
    value = err.get("input")
    name = str(loc[-1]) if loc else ""
    owner, info = _resolve(loc, data)
    desc = (info.description or "") if info is not None else ""
    instrument, resource = _instrument_context(loc, data)
    rule = "schema"

    if kind == "profile":
        what, fix = ctx["what"], ctx["fix"]
        if ctx.get("key"):
            loc = loc + split_key(ctx["key"])
        rule = "value"
    elif kind == "missing":
        what, fix = _missing(loc, name, owner, desc)
        rule = "missing-key"
    elif kind == "extra_forbidden":
        what, fix = _unknown_key(loc, name, owner, data)
        rule = "unknown-key"
    elif kind == "union_tag_invalid":
        raw = value.get("driver") if isinstance(value, Mapping) else None
        if isinstance(raw, str):
            what, fix = _unknown_driver(raw)
        else:
            what = f"driver must be a string, got {_describe(raw)}"
            fix = f'write driver = "..." with one of: {", ".join(DRIVERS)}.'
        loc = loc + ["driver"]
        rule = "unknown-driver"
    elif kind == "union_tag_not_found":
        got = value.get("driver") if isinstance(value, Mapping) else None
        if isinstance(value, Mapping) and "driver" in value:
            what = f"driver must be a string, got {_describe(got)}"
            loc = loc + ["driver"]
        else:
            what = "the instrument has no driver key"
        fix = f'add driver = "..." with one of: {", ".join(DRIVERS)}.'
        rule = "unknown-driver"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        what = f"expected a table, got {_describe(value)}"
        key = format_key(loc) or "section"
        fix = f"write [{key}] followed by its keys, or an inline table {{ key = value, ... }}."
        if len(loc) == 2 and loc[0] == "instruments":
            fix = "write each instrument as a [[instruments]] table with id, driver and port."
    elif kind in ("list_type", "tuple_type"):
        what = f"expected an array, got {_describe(value)}"
        fix = (
            "write each entry as its own [[instruments]] table."
            if loc == ["instruments"]
            else "write each entry as its own [[couplings]] table."
            if loc == ["couplings"]
            else f"write {name} = [ ... ]."
        )
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        what = f"expected an integer, got {_describe(value)}"
        fix = _retype_fix(name, value, int) or f"write {name} = <integer> ({desc or 'see docs'})."
    elif kind in ("float_type", "float_parsing"):
        what = f"expected a number, got {_describe(value)}"
        fix = _retype_fix(name, value, float) or f"write {name} = <number> ({desc or 'see docs'})."
    elif kind == "finite_number":
        what = f"{_describe(value)} is not a finite number"
        fix = f"write a finite number for {name} (nan and inf are not allowed here)."
    elif kind in ("bool_type", "bool_parsing"):
        what = f"expected true or false, got {_describe(value)}"
        fix = f"write {name} = true or {name} = false (lower case, no quotes)."
    elif kind in ("string_type", "string_unicode"):
        what = f"expected a string, got {_describe(value)}"
        fix = f'quote the value: {name} = "{_plain(value)}"' + (f" ({desc})" if desc else "")
    elif kind in ("literal_error", "enum"):
        what, fix = _not_allowed(name, value, info)
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op, bound = {
            "greater_than": (">", ctx.get("gt")),
            "greater_than_equal": (">=", ctx.get("ge")),
            "less_than": ("<", ctx.get("lt")),
            "less_than_equal": ("<=", ctx.get("le")),
        }[kind]
        what = f"{name} must be {op} {bound}, got {_describe(value)}"
        fix = f"use a value {op} {bound}" + (f" ({desc})" if desc else "") + "."
    elif kind in ("too_short", "too_long"):
        what = f"{name} has {ctx.get('actual_length')} entries; " + (
            f"at least {ctx.get('min_length')} needed"
            if kind == "too_short"
            else f"at most {ctx.get('max_length')} allowed"
        )
        fix = desc or "see docs/profile.md."
    elif kind == "value_error":
        what = str(ctx.get("error") or err["msg"]).removeprefix("Value error, ")
        fix = desc or "see docs/profile.md."
    else:
        what = err["msg"]
        fix = f"correct {name}" + (f": {desc}" if desc else " (see docs/profile.md).")
    return Issue(
        "error",
        rule,
        sentence(what),
        sentence(fix),
        key=format_key(loc) or None,
        file=file,
        instrument=instrument,
        resource=resource,
    )


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else "..."


def _retype_fix(name: str, value: Any, want: type) -> str | None:
    if isinstance(value, str):
        try:
            converted = want(value.strip())
        except ValueError:
            return None
        if isinstance(converted, float) and not math.isfinite(converted):
            return None
        return f"remove the quotes: {name} = {converted!r}."
    if want is int and isinstance(value, float) and value.is_integer():
        return f"write it without a decimal point: {name} = {int(value)}."
    return None


def _missing(loc: list, name: str, owner: Any, desc: str) -> tuple[str, str]:
    parent = format_key(loc[:-1])
    if name in DRIVERS:
        return (
            f"missing the [instruments.{name}] table",
            f"add [instruments.{name}] after this [[instruments]] entry with its settings "
            "(see docs/profile.md).",
        )
    if name == "lab":
        return "missing the [lab] table", 'add [lab] with name = "your lab".'
    where = (
        f" in [{parent}]"
        if parent and not parent.endswith("]")
        else (f" in {parent}" if parent else "")
    )
    return (
        f"missing required key {name!r}{where}",
        f"add {name} = ..." + (f" ({desc})" if desc else "") + ".",
    )


def _unknown_key(loc: list, name: str, owner: Any, data: Mapping[str, Any]) -> tuple[str, str]:
    allowed = list(owner.model_fields) if owner is not None else []
    if owner is not None and "driver" in allowed:
        allowed.remove("driver")
        allowed.insert(1, "driver")
    what = f"unknown key {name!r}"
    driver = _at(data, loc[:2] + ["driver"]) if loc[:1] == ["instruments"] else None
    if name in DRIVERS and isinstance(driver, str) and len(loc) == 3:
        return (
            f"table [instruments.{name}] does not belong to driver {driver!r}",
            f'rename it [instruments.{driver}], or set driver = "{name}" if that is the '
            "instrument.",
        )
    if name in ("port", "resource", "camera", "prefix") and isinstance(driver, str):
        right = INSTRUMENT_CLASSES[driver].hardware_key if driver in INSTRUMENT_CLASSES else None
        if right and right != name:
            return (
                f"{what}: driver {driver!r} is reached through {right!r}, not {name!r}",
                f"rename {name} to {right}.",
            )
    near = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if near:
        return what, f"did you mean {near[0]!r}? (allowed here: {', '.join(allowed)})."
    if name in _RENAMED:
        return what, f"use {_RENAMED[name]} instead."
    for model in INSTRUMENT_CLASSES.values():
        if name in model.model_fields and owner is not None and owner is not model:
            return (
                f"{what}: it is not a key of driver {driver!r}" if driver else what,
                f"remove it (allowed here: {', '.join(allowed)}).",
            )
    return what, f"remove it or correct the spelling (allowed here: {', '.join(allowed)})."


def _unknown_driver(tag: str) -> tuple[str, str]:
    near = difflib.get_close_matches(tag.lower(), DRIVERS, n=1, cutoff=0.5)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"unknown driver {tag!r}", f"{hint}known drivers: {', '.join(DRIVERS)}."


def _not_allowed(name: str, value: Any, info: FieldInfo | None) -> tuple[str, str]:
    options: list[str] = []
    if info is not None:
        ann = _unwrap(info.annotation)
        if typing.get_origin(ann) is typing.Literal:
            options = [str(a) for a in typing.get_args(ann)]
    what = f"{name} = {_describe(value)} is not allowed"
    if not options:
        return what, "see docs/profile.md for the allowed values."
    near = difflib.get_close_matches(str(value), options, n=1, cutoff=0.4) if value else []
    hint = f"did you mean {_toml_literal(near[0])}? " if near else ""
    return what, f"{hint}allowed: {', '.join(_toml_literal(o) for o in options)}."


# --- key path -> line number --------------------------------------------------------------------

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEYLINE_RE = re.compile(r"^\s*([A-Za-z0-9_.\"' -]+?)\s*=\s*(.*)$")


def _dotted(name: str) -> list[str]:
    return [p.strip().strip("\"'") for p in name.split(".")]


def locate_key(text: str, key: list) -> int | None:
    """Best-effort line of a key path in TOML text: the deepest line that is a prefix of it.

    Understands ``[table]``, ``[[array]]`` and ``key = value`` lines, and entries of a multi-line
    array of inline tables (one per line), which is how profiles are written. Good enough to point
    an editor at the right place; the key path in the message stays the exact reference.
    """
    arrays: dict[tuple, int] = {}
    table: tuple = ()
    best, best_len = None, 0
    open_array: tuple | None = None
    entry = -1

    def resolve(parts: list[str]) -> tuple:
        out: tuple = ()
        for part in parts:
            out += (part,)
            if out in arrays:
                out += (arrays[out],)
        return out

    def consider(path: tuple, line: int) -> None:
        nonlocal best, best_len
        if len(path) >= best_len and tuple(key[: len(path)]) == path:
            best, best_len = line, len(path)

    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if open_array is not None:
            if stripped.startswith("{"):
                entry += 1
                consider(open_array + (entry,), n)
            if stripped.startswith("]"):
                open_array = None
            continue
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER_RE.match(stripped)
        if header:
            parts = _dotted(header.group(2))
            if header.group(1) == "[[":
                base = resolve(parts[:-1]) + (parts[-1],)
                arrays[base] = arrays.get(base, -1) + 1
                table = base + (arrays[base],)
            else:
                table = resolve(parts)
            consider(table, n)
            continue
        keyline = _KEYLINE_RE.match(stripped)
        if keyline:
            path = table + tuple(_dotted(keyline.group(1)))
            consider(path, n)
            value = keyline.group(2).split("#", 1)[0].strip()
            if value == "[" or (value.startswith("[") and not value.endswith("]")):
                open_array, entry = path, -1
    return best


def _with_line(issue: Issue, text: str | None) -> Issue:
    if text is None or issue.key is None or issue.line is not None:
        return issue
    try:
        line = locate_key(text, split_key(issue.key))
    except Exception:  # best effort only; never mask the issue itself
        return issue
    return dataclasses.replace(issue, line=line) if line else issue


# --- where the data is ---------------------------------------------------------------------------

DATA_ENV = "DAQBRIDGE_DATA"
"""Environment variable naming the data directory; it wins over everything else."""
PROFILE_ENV = "DAQBRIDGE_PROFILE"
"""Environment variable naming the lab profile when no ``--profile`` is given."""


@dataclasses.dataclass(frozen=True)
class DataLocation:
    """Where a lab's runs are, and why there (``source`` goes into "not found" messages)."""

    directory: Path
    """The data directory: write-ahead log, camera frames, run counter, embedded catalog."""
    source: str
    catalog_dir: Path
    """Where the embedded catalog's files are (a ``sqlite:///`` catalog_uri moves them)."""
    uri: str | None = None
    """A Tiled server the profile writes to instead of the embedded catalog."""
    api_key: str | None = None


def locate_data(
    profile: str | os.PathLike | Profile | None = None,
    data: str | os.PathLike | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> DataLocation:
    """The one rule for the data directory, used by the runtime and by every command:

    1. ``$DAQBRIDGE_DATA``, if set (a deployment, a queue worker or a test redirects every
       program at once, whatever each was told);
    2. ``data`` (``--data DIR``, ``Runtime(data_dir=...)``);
    3. the profile's ``lab.data_dir`` (or the directory of its ``sqlite:///`` catalog, or its
       Tiled server): the profile given, else ``$DAQBRIDGE_PROFILE``, else the embedded simulated
       lab, so ``daqbridge run`` and ``daqbridge catalog list`` with the same (or no) profile
       meet in the same directory.

    The profile is only read when steps 1 and 2 do not decide (models only: a catalog reader
    must not fail on a serial port that is unplugged today).
    """
    env = os.environ if environ is None else environ
    chosen = (env.get(DATA_ENV) or "").strip()
    if chosen:
        directory = _absolute(chosen)
        return DataLocation(directory, f"from ${DATA_ENV}", directory)
    if data is not None and str(data) != "":
        directory = _absolute(data)
        return DataLocation(directory, "from --data", directory)
    if not isinstance(profile, Profile):
        if profile is None or str(profile) == "":
            profile = (env.get(PROFILE_ENV) or "").strip() or None
        profile = parse_profile(Path(os.fspath(profile)) if profile is not None else None)
    lab = profile.lab
    directory = profile.data_path(env)
    source = f"lab.data_dir of profile {profile.label}"
    uri = lab.catalog_uri
    if uri is not None and uri.startswith("sqlite:///"):
        catalog_dir = _absolute(uri[len("sqlite:///") :]).parent
        return DataLocation(directory, f"lab.catalog_uri of profile {profile.label}", catalog_dir)
    if uri is not None:
        return DataLocation(directory, source, directory, uri, lab.resolved_api_key(env))
    return DataLocation(directory, source, directory)


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.normpath(Path(path).expanduser().absolute()))
