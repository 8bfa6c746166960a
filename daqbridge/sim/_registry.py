"""Which simulators exist, how to build one from strings, and named running instances.

Simulators are built from three places that only speak strings (CLI flags, ``sim://`` URL query
parameters, lab profiles) and from Python. Every option is checked here, once, so a typo such as
``reply_dealy=0.1`` fails with the list of valid options instead of being silently ignored and
leaving a fault campaign that injects nothing.

Simulator modules are imported lazily: ``daqbridge sim list`` and the URL handler must work even
while one instrument's module is broken or not written yet.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import re
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

from daqbridge.errors import ConfigError
from daqbridge.sim._core import Faults, SerialSimulator

_DECLARATION = re.compile(
    r'^SIMULATOR = "(?P<transport>serial|socket):(?P<attr>[A-Za-z_][A-Za-z0-9_]*)"', re.M
)


def _declared_kinds(package: Path = Path(__file__).parent) -> dict[str, dict[str, str]]:
    """{transport: {kind: "module:attr"}} of the simulator modules of this package.

    A simulator module declares itself with one line, ``SIMULATOR = "serial:MaiTaiSimulator"``
    (or ``"socket:serve_tcp"``); its kind is its module name. The line is found in the source,
    without importing the module: a new simulator needs no line here, and a broken one still
    lists its kind and fails only when it is used (with a clear error, :func:`load_target`).
    """
    kinds: dict[str, dict[str, str]] = {"serial": {}, "socket": {}}
    for source in sorted(package.glob("*.py")):
        if source.stem.startswith("_"):
            continue
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if (m := _DECLARATION.search(text)) is not None:
            kinds[m["transport"]][source.stem] = f"daqbridge.sim.{source.stem}:{m['attr']}"
    return kinds


_DECLARED = _declared_kinds()

SERIAL_KINDS: dict[str, str] = _DECLARED["serial"]
"""Serial instruments: kind -> ``module:Class`` of a :class:`SerialSimulator` subclass."""

SOCKET_KINDS: dict[str, str] = _DECLARED["socket"]
"""Instruments served on a TCP socket instead of a serial port: kind -> ``module:callable``."""

_FAULT_FIELDS = {f.name: f for f in fields(Faults)}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def known_kinds() -> list[str]:
    """Every simulator kind, serial and socket, sorted."""
    return sorted({*SERIAL_KINDS, *SOCKET_KINDS})


def _kind_error(kind: str) -> ConfigError:
    near = difflib.get_close_matches(kind.lower(), known_kinds(), n=1)
    return ConfigError(
        f"unknown simulator kind {kind!r}; known kinds: {', '.join(known_kinds())}.",
        key="kind",
        fix=(f"did you mean {near[0]!r}? Otherwise use" if near else "use")
        + " one of the known kinds (`daqbridge sim list` prints them).",
    )


def load_target(kind: str) -> Any:
    """Import and return the class (or serve function) registered for ``kind``."""
    target = SERIAL_KINDS.get(kind) or SOCKET_KINDS.get(kind)
    if target is None:
        raise _kind_error(kind)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(
            f"the {kind} simulator is not available: module {module_name} is not installed or "
            "not written yet.",
            key="kind",
            fix="update daqbridge, or use another simulator kind.",
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            f"the {kind} simulator is incomplete: {module_name} has no {attr}.",
            key="kind",
            fix="update daqbridge; this is a packaging bug, please report it.",
        ) from None


def simulator_class(kind: str) -> type[SerialSimulator]:
    """The :class:`SerialSimulator` subclass of a serial ``kind``."""
    if kind in SOCKET_KINDS and kind not in SERIAL_KINDS:
        raise ConfigError(
            f"{kind!r} is not a serial instrument: it is served on a TCP socket.",
            key="kind",
            fix=f"run `daqbridge sim serve {kind}`, or use daqbridge.sim.scpi directly.",
        )
    return load_target(kind)


# --- option parsing -----------------------------------------------------------------------------


def _parse_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {raw!r}")


def _parse_scalar(name: str, raw: Any, typename: str) -> Any:
    if typename == "bool":
        return _parse_bool(name, raw)
    if typename == "int":
        if isinstance(raw, bool):
            raise ValueError(f"{name} must be an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        try:
            return int(str(raw).strip(), 0)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if typename == "float":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        try:
            return float(str(raw).strip())
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None
    return raw if not isinstance(raw, str) else raw.strip()


def _coerce(name: str, raw: Any, annotation: Any, default: Any) -> Any:
    """Turn a string option into the type the constructor declares (other values pass through).

    Annotations are strings here (``from __future__ import annotations``), so the type is read
    from their text; a default value decides when there is no annotation.
    """
    if not isinstance(raw, str):
        return raw
    empty = inspect.Parameter.empty
    if annotation is empty:
        text = ""
    elif isinstance(annotation, str):
        text = annotation
    else:
        text = getattr(annotation, "__name__", "") or str(annotation)
    if not text:
        text = "str" if default is None or default is empty else type(default).__name__
    if "Callable" in text:
        raise ValueError(f"{name} takes a Python callable and cannot be given as text")
    container = re.match(r"^\s*(Sequence|Iterable|list|tuple|Collection|set|frozenset)\b", text)
    if container or isinstance(default, tuple | list):
        inner = re.search(r"\[([A-Za-z_]+)", text)
        item_type = inner.group(1) if inner else "str"
        items = [p for p in re.split(r"[,\s]+", raw.strip()) if p]
        return [_parse_scalar(name, p, item_type) for p in items]
    for typename in ("bool", "float", "int", "str"):  # "float | None" -> float; bool before int
        if re.search(rf"\b{typename}\b", text):
            return _parse_scalar(name, raw, typename)
    return raw


def faults_from_options(options: dict[str, Any], *, kind: str = "simulator") -> Faults:
    """A :class:`Faults` from strings or values, with range checks and clear errors."""
    kw: dict[str, Any] = {}
    for name, raw in options.items():
        f = _FAULT_FIELDS.get(name)
        if f is None:
            continue
        try:
            if name == "seed":
                value: Any = None if raw is None else _parse_scalar(name, raw, "int")
            elif f.type in ("bool", bool):
                value = _parse_bool(name, raw)
            elif name in ("drop_next", "garble_next"):
                value = _parse_scalar(name, raw, "int")
                if value < 0:
                    raise ValueError(f"{name} must be >= 0, got {value}")
            else:
                value = _parse_scalar(name, raw, "float")
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{name} must be a finite number >= 0, got {raw!r}")
                if name.endswith("probability") and value > 1:
                    raise ValueError(f"{name} is a probability (0 to 1), got {raw!r}")
        except ValueError as exc:
            raise ConfigError(
                f"bad fault option for the {kind} simulator: {exc}.",
                key=name,
                fix="see docs/simulators.md for the fault options and their ranges.",
            ) from None
        kw[name] = value
    return Faults(**kw)


def simulator_options(kind: str) -> dict[str, inspect.Parameter]:
    """Constructor options a serial ``kind`` accepts besides the fault switches."""
    cls = simulator_class(kind)
    params = {}
    for klass in cls.__mro__:  # subclasses may forward **kwargs to SerialSimulator
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                params.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    params.pop("faults", None)
    params.pop("clock", None)  # a Python-only hook for deterministic tests
    return params


def create_simulator(kind: str, **options: Any) -> SerialSimulator:
    """Build a serial simulator of ``kind`` from options given as text or as values.

    Fault switches (``reply_delay``, ``drop_probability``, ``echo``, ``seed``, ...) go to
    :class:`Faults`; everything else must be a constructor argument of the simulator class, so a
    misspelt option is an error naming the valid ones. ``faults=Faults(...)`` and ``clock=`` are
    accepted as Python values.
    """
    cls = simulator_class(kind)
    params = simulator_options(kind)
    faults = options.pop("faults", None)
    clock = options.pop("clock", None)
    fault_opts = {k: v for k, v in options.items() if k in _FAULT_FIELDS and k not in params}
    unknown = sorted(k for k in options if k not in params and k not in _FAULT_FIELDS)
    if unknown:
        valid = sorted({*params, *_FAULT_FIELDS})
        raise ConfigError(
            f"the {kind} simulator has no option {', '.join(map(repr, unknown))}; valid options: "
            f"{', '.join(valid)}.",
            key=unknown[0],
            fix="correct the option name (see docs/simulators.md).",
        )
    if faults is not None and fault_opts:
        raise ConfigError(
            f"give the {kind} simulator either faults=Faults(...) or fault options "
            f"({', '.join(sorted(fault_opts))}), not both.",
            key="faults",
            fix="merge the fault options into the Faults object.",
        )
    kw: dict[str, Any] = {}
    for name, raw in options.items():
        if name in fault_opts:
            continue
        p = params[name]
        try:
            kw[name] = _coerce(name, raw, p.annotation, p.default)
        except ValueError as exc:
            raise ConfigError(
                f"bad option for the {kind} simulator: {exc}.",
                key=name,
                fix="see docs/simulators.md for the options of each simulator.",
            ) from None
    kw["faults"] = faults if faults is not None else faults_from_options(fault_opts, kind=kind)
    if clock is not None:
        kw["clock"] = clock
    try:
        return cls(**kw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot build the {kind} simulator: {exc}",
            fix="check the option values (see docs/simulators.md).",
        ) from exc


# --- named instances ----------------------------------------------------------------------------

_instances: dict[str, SerialSimulator] = {}
_instances_lock = threading.Lock()
_MISSING: Any = object()


def register(name: str, sim: SerialSimulator, *, replace: bool = False) -> SerialSimulator:
    """Make ``sim`` reachable as ``name`` (``sim://kind?name=NAME``, ``lookup(NAME)``).

    A name already taken by another simulator is an error unless ``replace``: two tests or two
    profile entries silently sharing one instrument would couple what should be independent.
    """
    if not name or not isinstance(name, str):
        raise ConfigError(f"a simulator name must be a non-empty string, got {name!r}.", key="name")
    with _instances_lock:
        current = _instances.get(name)
        if current is not None and current is not sim and not replace:
            raise ConfigError(
                f"the simulator name {name!r} is already used by a {current.kind} simulator.",
                key="name",
                fix="choose another name, unregister the old one, or pass replace=True.",
            )
        _instances[name] = sim
    return sim


def lookup(name: str, default: Any = _MISSING) -> SerialSimulator:
    """The simulator registered as ``name`` (or ``default`` if given and there is none)."""
    with _instances_lock:
        sim = _instances.get(name)
        names = sorted(_instances)
    if sim is None:
        if default is not _MISSING:
            return default
        raise ConfigError(
            f"no simulator is registered as {name!r}; registered: {', '.join(names) or 'none'}.",
            key="name",
            fix="register it first (daqbridge.sim.register), or open sim://KIND?name=NAME.",
        )
    return sim


def unregister(name: str) -> SerialSimulator | None:
    """Forget ``name``; returns the simulator it named, or None. The simulator keeps running."""
    with _instances_lock:
        return _instances.pop(name, None)


def registered_names() -> list[str]:
    with _instances_lock:
        return sorted(_instances)
