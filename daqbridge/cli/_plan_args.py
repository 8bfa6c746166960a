"""Plans by name and their arguments from text, for ``daqbridge run`` (and any other front end
that receives plans as words: a queue server, a script runner).

Why it is built this way:

* Plans come from an allow-list (:func:`plan_registry`): a name is looked up, never imported or
  evaluated, so ``daqbridge run os.system`` is just an unknown plan.
* Arguments are read by fixed rules and nothing else: device ids become the devices, ``5`` and
  ``-1.5e-3`` numbers, ``true``/``false`` booleans, ``1,2,3`` and JSON arrays (``json.loads``)
  lists, ``key=value`` keyword arguments, ``"text"`` strings. Anything else is refused with the
  rules in the message. Nothing is ever passed to ``eval``: ``__import__('os').system('...')``
  is a word the reader does not understand, not code.
* Every check that can run before the RunEngine does: the plan's signature is bound, numbers of
  points are whole numbers, motors are movable, positions are inside the axes' soft limits, and
  the plan generator is advanced to its first message (:func:`prime`), which runs the plan's own
  argument checks. A bad argument is a :class:`~daqbridge.errors.PlanArgumentError` before any
  motor moves and before any run is opened.
* Nothing typed is unbounded: pauses, numbers of points, the memory a plan's trajectory takes,
  nesting and run metadata meet the limits of :mod:`daqbridge.plans._checks` (the same ones the
  plans apply to themselves), and metadata is checked as the run start document will take it.
* The checks run twice in ``daqbridge run``: first against the profile's device ids
  (:class:`DeviceRef` placeholders, milliseconds after the command is typed), then against the
  started devices. A typo never costs the lab's start-up time.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import numbers
import re
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daqbridge.errors import DaqbridgeError, PlanArgumentError
from daqbridge.plans._checks import (
    MAX_NESTING,
    plan_error,
    require_delay,
    require_points,
)
from daqbridge.plans._metadata import check_metadata


class UnknownPlan(PlanArgumentError):
    """A plan name that is not in the allow-list."""


class UnknownDevice(PlanArgumentError):
    """A device id that the lab does not have."""


@dataclass(frozen=True)
class DeviceRef:
    """A device known only by its id (from the profile), before the lab has started.

    Lets every argument check that needs no hardware run before start-up.
    """

    id: str

    @property
    def name(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return self.id


# --- the plans --------------------------------------------------------------------------------

# How the CLI words of a bluesky plan that takes its detectors first map onto its call.
#   count: [DETECTOR ...] [NUM [DELAY]]    -> count([DET...], NUM, DELAY)
#   scan:  MOTOR START STOP [...] NUM      -> scan([DET...], MOTOR, START, STOP, ..., num=NUM)
#   grid:  MOTOR START STOP NUM [...]      -> grid_scan([DET...], MOTOR, START, STOP, NUM, ...)
#   list:  MOTOR POINTS [...]              -> list_scan([DET...], MOTOR, [POINTS], ...)
#   fixed: the plan's positional params    -> plan([DET...], *ARGS)
_BLUESKY_PLANS: dict[str, str] = {
    "count": "count",
    "scan": "scan",
    "rel_scan": "scan",
    "list_scan": "list",
    "rel_list_scan": "list",
    "grid_scan": "grid",
    "rel_grid_scan": "grid",
    "list_grid_scan": "list",
    "rel_list_grid_scan": "list",
    "log_scan": "fixed",
    "rel_log_scan": "fixed",
    "spiral": "fixed",
    "rel_spiral": "fixed",
    "spiral_fermat": "fixed",
    "rel_spiral_fermat": "fixed",
    "spiral_square": "fixed",
    "rel_spiral_square": "fixed",
    "tune_centroid": "fixed",
    "adaptive_scan": "fixed",
    "rel_adaptive_scan": "fixed",
}

_GROUP_FORMS = {
    "scan": "MOTOR START STOP [MOTOR START STOP ...] NUM",
    "grid": "MOTOR START STOP NUM [MOTOR START STOP NUM ...] [snake_axes=true]",
    "list": "MOTOR POINTS [MOTOR POINTS ...]",
}

#: Words per motor in each grouped layout (MOTOR START STOP, MOTOR START STOP NUM, MOTOR POINTS).
_GROUP_SIZES = {"scan": 3, "grid": 4, "list": 2}

_GROUP_CALLS = {
    "scan": "{name}([DET, ...], MOTOR, START, STOP, ..., num=NUM)",
    "grid": "{name}([DET, ...], MOTOR, START, STOP, NUM, ...)",
    "list": "{name}([DET, ...], MOTOR, [POINTS], ...)",
}

# Parameters that take Python callables or are given another way: never from the command line.
_NOT_FROM_CLI = frozenset({"per_step", "per_shot", "detectors"})


@dataclass(frozen=True)
class PlanSpec:
    """One plan ``daqbridge run`` offers: its function and how CLI words map onto its call."""

    name: str
    func: Callable[..., Any]
    source: str
    """``"bluesky"`` (bluesky.plans) or ``"daqbridge"`` (daqbridge.plans)."""
    layout: str
    """``count``, ``scan``, ``grid``, ``list`` (bluesky plans with motor groups), ``fixed``."""
    takes_detectors: bool
    """The first parameter is a list of detectors, filled from ``--detector``."""

    @property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.func)

    @property
    def summary(self) -> str:
        """The docstring's first sentence, on one line."""
        doc = inspect.getdoc(self.func) or ""
        paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split()).replace("``", "")
        sentence = re.split(r"(?<=[.!?])\s", paragraph, maxsplit=1)[0]
        return sentence if len(sentence) <= 96 else sentence[:93] + "..."

    def parameters(self) -> list[inspect.Parameter]:
        """Parameters taken from the command line, in order (detectors and callables left out)."""
        return [
            p
            for p in self.signature.parameters.values()
            if p.name not in _NOT_FROM_CLI
            and not (self.takes_detectors and p is next(iter(self.signature.parameters.values())))
        ]

    def keywords(self) -> list[str]:
        return [
            p.name
            for p in self.parameters()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "md"
        ]

    @property
    def cli_form(self) -> str:
        """The words after the plan name, e.g. ``MOTOR START STOP NUM --detector DET``."""
        if self.layout == "count":
            words = "[DETECTOR ...] [NUM [DELAY]]"
        elif self.layout in _GROUP_FORMS:
            words = _GROUP_FORMS[self.layout]
        else:
            words = " ".join(_param_words(self.parameters()))
        if self.takes_detectors:
            det = "[--detector DET ...]" if self.layout == "count" else "--detector DET [...]"
            words = f"{words} {det}".strip()
        return words

    @property
    def python_form(self) -> str:
        """The call the CLI words become."""
        module = "bluesky.plans" if self.source == "bluesky" else "daqbridge.plans"
        if self.layout == "count":
            call = f"{self.name}([DET, ...], num=NUM, delay=DELAY)"
        elif self.layout in _GROUP_CALLS:
            call = _GROUP_CALLS[self.layout].format(name=self.name)
        else:
            required = [
                p.name.upper()
                for p in self.parameters()
                if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
            ]
            head = ["[DET, ...]"] if self.takes_detectors else []
            optional = ["..."] if len(required) < len(self.keywords()) else []
            call = f"{self.name}({', '.join(head + required + optional)})"
        return f"{module}.{call}"

    def usage(self) -> str:
        return f"daqbridge run {self.name} {self.cli_form}".rstrip()


def _param_words(params: Iterable[inspect.Parameter]) -> list[str]:
    words = []
    for p in params:
        if p.name == "md":
            continue
        if p.kind is p.VAR_POSITIONAL:
            words.append(f"[{p.name.upper()} ...]")
        elif p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD:
            words.append(p.name.upper())
        else:
            default = p.default
            shown = "true" if default is True else "false" if default is False else default
            shown = "..." if shown is None or shown == () else shown
            words.append(f"[{p.name}={shown}]")
    return words


_REGISTRY: dict[str, PlanSpec] | None = None


def plan_registry() -> dict[str, PlanSpec]:
    """Every plan ``daqbridge run`` offers, by name: the bluesky allow-list, then the lab's own.

    A daqbridge plan with the name of a bluesky plan would hide it; the lab's plans win, since
    they are the ones the lab wrote for its instruments.
    """
    global _REGISTRY
    if _REGISTRY is not None:
        return _REGISTRY
    import bluesky.plans as bp

    registry: dict[str, PlanSpec] = {}
    for name, layout in _BLUESKY_PLANS.items():
        func = getattr(bp, name, None)
        if func is None:  # an older or newer bluesky without it
            continue
        registry[name] = PlanSpec(name, func, "bluesky", layout, takes_detectors=True)
    from daqbridge.plans import PLANS

    for name, func in PLANS.items():
        registry[name] = PlanSpec(name, func, "daqbridge", "fixed", takes_detectors=False)
    _REGISTRY = registry
    return registry


def resolve_plan(name: str) -> PlanSpec:
    """The plan called ``name``, or :class:`UnknownPlan` with the closest names."""
    registry = plan_registry()
    spec = registry.get(name)
    if spec is not None:
        return spec
    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    err = UnknownPlan(
        f"no plan {name!r}.{hint} Plans: {', '.join(sorted(registry))}.",
        fix="pick one of the plans above; `daqbridge run --list` shows what each one takes.",
    )
    err.plan = name
    raise err


def format_plan_list(registry: Mapping[str, PlanSpec] | None = None) -> str:
    """Every plan with its command-line form and the call it becomes (``daqbridge run --list``)."""
    registry = plan_registry() if registry is None else registry
    lines: list[str] = []
    for source, title in (("daqbridge", "The lab's plans (daqbridge.plans)"), ("bluesky", "")):
        specs = [s for s in registry.values() if s.source == source]
        if not specs:
            continue
        title = title or "bluesky plans (bluesky.plans); detectors come from --detector"
        lines.append(title + ":")
        for spec in sorted(specs, key=lambda s: s.name):
            lines.append(f"  {spec.name} {spec.cli_form}")
            lines.append(f"      -> {spec.python_form}")
            if spec.summary:
                lines.append(f"      {spec.summary}")
        lines.append("")
    return "\n".join(lines).rstrip()


# --- reading one argument ---------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)

RULES = (
    "an argument is a device id, a number (5, -1.5, 2e-3), true or false, none, a list "
    '(1,2,3 or a JSON array [1, 2, 3]; a one-element list is 5,), a quoted string ("text"), '
    "or key=VALUE for a keyword argument"
)


def is_device(value: Any) -> bool:
    return isinstance(value, DeviceRef) or hasattr(value, "read") or hasattr(value, "set")


def device_label(value: Any) -> str:
    return str(getattr(value, "name", None) or value)


def _unknown_device(token: str, devices: Mapping[str, Any], where: str) -> UnknownDevice:
    root = token.split(".", 1)[0]
    close = difflib.get_close_matches(root, list(devices), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    err = UnknownDevice(
        f"{where}: no device {root!r} in this lab.{hint} Devices: "
        f"{', '.join(sorted(devices)) or 'none'}.",
        fix="use a device id from the list (`daqbridge config check` shows the profile's "
        'devices), or quote the word ("text") if it is meant as a string.',
    )
    err.argument = where
    err.value = token
    return err


WHOLE = "a whole number"
NUMBER = "a number"


def _not_a_number(where: str, kind: str, token: str, fix: str | None = None) -> PlanArgumentError:
    """A word where the plan takes a number: say so, not "no device" (it is no misspelt id)."""
    example = "11" if kind == WHOLE else "2.5"
    err = PlanArgumentError(
        f"{where.removesuffix('=')}: expected {kind}, got {_clip(token)!r}.",
        fix=fix or f"write it in digits, e.g. {example}.",
    )
    err.argument = where
    err.value = token
    return err


@dataclass(frozen=True)
class _UnknownWord:
    """A word that is no device id, in a motor group whose roles (MOTOR, START, STOP, NUM) are
    known only once all the words are read: :func:`_resolve_group_words` says which it was."""

    token: str
    error: UnknownDevice

    def __repr__(self) -> str:
        return repr(self.token)


def _component(token: str, devices: Mapping[str, Any], where: str) -> Any:
    """``device.component.sub``: only through declared ophyd components, never getattr on
    arbitrary names (``sim_meter.__class__`` is not an argument)."""
    root, *path = token.split(".")
    obj = devices[root]
    if isinstance(obj, DeviceRef):
        return DeviceRef(token)
    for i, part in enumerate(path):
        names = getattr(obj, "component_names", ()) or ()
        if part not in names:
            shown = ".".join([root, *path[:i]])
            raise PlanArgumentError(
                f"{where}: {shown!r} has no component {part!r}"
                + (f"; components: {', '.join(names)}" if names else "")
                + ".",
                instrument=root,
                fix="name a component from the list, or the device itself.",
            )
        obj = getattr(obj, part)
    return obj


def parse_value(
    token: str,
    devices: Mapping[str, Any],
    *,
    where: str = "argument",
    as_string: bool = False,
    allow_mapping: bool = False,
    number: str | None = None,
    defer_unknown: bool = False,
) -> Any:
    """One command-line word as a plan argument, by the fixed rules in :data:`RULES`.

    ``as_string`` is for parameters declared ``str`` (a field name): the word is kept as text.
    ``allow_mapping`` accepts a JSON object (for ``md={...}``). ``number`` (:data:`WHOLE` or
    :data:`NUMBER`) is what the place takes when the plan says it takes a number: a word there
    is refused as not a number rather than as an unknown device. ``defer_unknown`` returns an
    unknown word as an :class:`_UnknownWord` for the caller to place.
    """
    text = token.strip()
    if as_string:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            return text[1:-1]
        return token
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanArgumentError(
                f"{where}: {_clip(token)!r} is not a valid JSON array ({exc.msg} at character "
                f"{exc.pos}).",
                fix='write it like [1, 2.5, 3] or ["sim_meter", "sim_dmm"], or as 1,2.5,3.',
            ) from None
        except RecursionError:
            raise _too_deep(where, token) from None
        _check_depth(value, where, token)
        return _from_json(value, devices, where, token)
    if text.startswith("{"):
        if not allow_mapping:
            raise PlanArgumentError(
                f"{where}: {token!r}: a JSON object is only accepted for md={{...}}.",
                fix=RULES + ".",
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanArgumentError(
                f"{where}: {_clip(token)!r} is not a valid JSON object ({exc.msg}).",
                fix='write it like {"sample": "A1", "temperature": 295}.',
            ) from None
        except RecursionError:
            raise _too_deep(where, token) from None
        _check_depth(value, where, token)
        if not isinstance(value, dict):
            raise PlanArgumentError(f"{where}: {token!r} is not a JSON object.", fix=RULES + ".")
        return value
    if "," in text and not (text[0] in "\"'" and text[-1] == text[0] and len(text) >= 2):
        parts = [p.strip() for p in text.split(",")]
        if parts and parts[-1] == "":
            parts.pop()  # "5," is the list [5]
        if not parts or any(p == "" for p in parts):
            raise PlanArgumentError(
                f"{where}: {token!r} has an empty element.",
                fix="write lists as 1,2,3 (no empty items) or as a JSON array [1, 2, 3].",
            )
        return [_scalar(p, devices, f"{where} item {i + 1}") for i, p in enumerate(parts)]
    return _scalar(text, devices, where, number=number, defer_unknown=defer_unknown)


def _clip(token: str, size: int = 60) -> str:
    """A word as shown in a message: a 100 kB argument must not become a 100 kB message."""
    return token if len(token) <= size else token[: size - 3] + "..."


def _too_deep(where: str, token: str) -> PlanArgumentError:
    return PlanArgumentError(
        f"{where}: {_clip(token)!r} is nested more than {MAX_NESTING} levels deep.",
        fix="write lists of numbers or device ids, like [1, 2, 3] or [[0, 1], [2, 3]].",
    )


def _check_depth(value: Any, where: str, token: str) -> None:
    """Refuse nesting beyond MAX_NESTING before anything recurses into ``value``."""
    level = [value]
    for _ in range(MAX_NESTING):
        level = [
            item
            for node in level
            if isinstance(node, list | dict)
            for item in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return
    if any(isinstance(node, list | dict) for node in level):
        raise _too_deep(where, token)


def _scalar(
    text: str,
    devices: Mapping[str, Any],
    where: str,
    *,
    number: str | None = None,
    defer_unknown: bool = False,
) -> Any:
    lower = text.lower()
    if lower == "true":
        return True
    if lower == "false":
        return False
    if lower in ("none", "null"):
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if text in devices:
        return devices[text]
    if _NAME.fullmatch(text):
        root = text.split(".", 1)[0]
        if "." in text and root in devices:
            return _component(text, devices, where)
        if number is not None:
            raise _not_a_number(where, number, text)
        if defer_unknown:
            return _UnknownWord(text, _unknown_device(text, devices, where))
        raise _unknown_device(text, devices, where)
    raise PlanArgumentError(
        f"{where}: cannot read {text!r} (nothing is evaluated as Python).",
        fix=RULES + ".",
    )


def _from_json(value: Any, devices: Mapping[str, Any], where: str, token: str) -> Any:
    if isinstance(value, list):
        return [_from_json(v, devices, f"{where} item {i + 1}", token) for i, v in enumerate(value)]
    if isinstance(value, str):
        if value in devices:
            return devices[value]
        if _NAME.fullmatch(value) and value.split(".", 1)[0] in devices:
            return _component(value, devices, where)
        raise _unknown_device(value, devices, where)
    if isinstance(value, dict):
        raise PlanArgumentError(
            f"{where}: {token!r}: objects inside a list are not plan arguments.", fix=RULES + "."
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise PlanArgumentError(f"{where}: {value!r} is not a finite number.", fix=RULES + ".")
    return value  # numbers, booleans, null


def parse_md(items: Iterable[str]) -> dict[str, Any]:
    """``--md KEY=VALUE`` items: numbers, booleans, lists and JSON as such, anything else text."""
    md: dict[str, Any] = {}
    for item in items:
        match = _KEYWORD.fullmatch(item.strip())
        if match is None:
            raise PlanArgumentError(
                f"--md {item!r}: expected KEY=VALUE with KEY a name (letters, digits, _).",
                fix="e.g. --md sample=A1 --md temperature=295.",
            )
        key, raw = match.groups()
        try:
            value: Any = parse_value(raw, {}, where=f"--md {key}", allow_mapping=True)
        except PlanArgumentError:
            value = raw  # metadata may be any text: 'A1-left', 'run 3'
        md[key] = value
    return md


# --- binding a call ---------------------------------------------------------------------------


@dataclass
class PlanCall:
    """A plan with its arguments, checked, ready to be made into a generator."""

    spec: PlanSpec
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def make(self) -> Generator[Any, Any, Any]:
        """A fresh plan generator, advanced to its first message (:func:`prime`)."""
        return prime(self.spec, self.spec.func(*self.args, **self.kwargs))

    def describe(self) -> str:
        """The call as Python, devices by name (for the terminal and the log)."""
        parts = [_show(a) for a in self.args]
        parts += [f"{k}={_show(v)}" for k, v in self.kwargs.items() if k != "md"]
        return f"{self.spec.name}({', '.join(parts)})"


def _show(value: Any) -> str:
    if is_device(value):
        return device_label(value)
    if isinstance(value, list | tuple):
        inner = ", ".join(_show(v) for v in value)
        return f"[{inner}]"
    return repr(value)


def _ann_text(param: inspect.Parameter) -> str:
    ann = param.annotation
    if ann is param.empty:
        return ""
    text = ann if isinstance(ann, str) else inspect.formatannotation(ann)
    return (
        text.replace("typing.", "")
        .replace("collections.abc.", "")
        .replace("bluesky.protocols.", "")
    )


_STR_TYPES = {"str", "str | None", "None | str", "Optional[str]"}


def _is_str_param(param: inspect.Parameter | None) -> bool:
    return param is not None and _ann_text(param) in _STR_TYPES


def _number_kind(param: inspect.Parameter | None) -> str | None:
    """:data:`WHOLE` or :data:`NUMBER` when the plan's signature says ``param`` takes one."""
    if param is None:
        return None
    if param.name in _DELAYS:
        return NUMBER
    base = _ann_text(param).replace(" | None", "").replace("None | ", "")
    return {"int": WHOLE, "float": NUMBER}.get(base)


def _resolve_group_words(
    spec: PlanSpec, positional: list[Any], keywords: Mapping[str, Any]
) -> None:
    """Place the unknown words of a motor-group plan (scan, grid, list) by the plan's grouping:
    in a MOTOR place it is a device id that is not in the lab (with the close ids); in a START,
    STOP or NUM place it is a word that should have been a number."""
    unknown = [i for i, value in enumerate(positional) if isinstance(value, _UnknownWord)]
    if not unknown:
        return
    first = 1 if positional and _is_device_list(positional[0]) else 0  # scan [det1,det2] ...
    rest = len(positional) - first
    size = _GROUP_SIZES[spec.layout]
    trailing_num = spec.layout == "scan" and "num" not in keywords
    grouped = rest - 1 if trailing_num else rest
    word = positional[unknown[0]]
    if grouped < size or grouped % size:
        raise word.error  # the grouping does not fit: no place can be told, keep the device hint
    index = unknown[0] - first
    if trailing_num and index == rest - 1:
        raise _not_a_number("num", WHOLE, word.token)
    n, place = divmod(index, size)
    if place == 0:
        raise word.error
    if spec.layout == "list":
        raise _not_a_number(
            f"POINTS {n + 1}",
            "a list of numbers",
            word.token,
            fix="write positions as 1,2,3 or [1, 2, 3] (one point: 5,).",
        )
    role = ("START", "STOP", "NUM")[place - 1]
    raise _not_a_number(f"{role} {n + 1}", WHOLE if role == "NUM" else NUMBER, word.token)


def build_plan_call(
    spec: PlanSpec,
    tokens: Sequence[str],
    devices: Mapping[str, Any],
    *,
    detectors: Sequence[str] = (),
    md: Mapping[str, Any] | None = None,
) -> PlanCall:
    """Read ``tokens`` (the words after the plan name) into a checked :class:`PlanCall`.

    ``devices`` maps device ids to devices (or :class:`DeviceRef` placeholders for the early
    check); ``detectors`` are the ``--detector`` ids; ``md`` is added to the run's metadata.
    Raises :class:`PlanArgumentError` (or :class:`UnknownDevice`) naming the argument and the
    plan's command-line form.
    """
    params = {p.name: p for p in spec.signature.parameters.values()}
    positional_params = [
        p for p in spec.parameters() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    has_varargs = any(p.kind is p.VAR_POSITIONAL for p in params.values())

    # 1. Words -> positional values and keyword values.
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for token in tokens:
        match = _KEYWORD.fullmatch(token)
        if match is not None and not token.lstrip().startswith(("[", "{", '"', "'")):
            key, raw = match.groups()
            param = params.get(key)
            if param is None or key in _NOT_FROM_CLI or param.kind is param.VAR_POSITIONAL:
                allowed = spec.keywords() + ["md"]
                close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.6)
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise _usage_error(
                    spec,
                    f"{spec.name}() has no keyword argument {key!r}.{hint} Keywords: "
                    f"{', '.join(allowed)}.",
                )
            if key in keywords:
                raise _usage_error(spec, f"{key}= is given twice.")
            keywords[key] = parse_value(
                raw,
                devices,
                where=f"{key}=",
                as_string=_is_str_param(param),
                allow_mapping=key == "md",
                number=_number_kind(param),
            )
            continue
        index = len(positional)
        target = None
        if not has_varargs and spec.layout != "count" and index < len(positional_params):
            target = positional_params[index]
        positional.append(
            parse_value(
                token,
                devices,
                where=f"argument {index + 1}" + (f" ({target.name})" if target else ""),
                as_string=_is_str_param(target),
                number=_number_kind(target),
                defer_unknown=spec.layout in _GROUP_FORMS,
            )
        )
    if spec.layout in _GROUP_FORMS:
        _resolve_group_words(spec, positional, keywords)

    # 2. Detectors first, for the bluesky plans that take them.
    dets: list[Any] = []
    for det_id in detectors:
        dets.append(parse_value(det_id, devices, where="--detector"))
    if spec.takes_detectors:
        if positional and _is_device_list(positional[0]):
            dets.extend(positional.pop(0))  # the Python form: scan [det1,det2] motor ...
        if spec.layout == "count":
            while positional and is_device(positional[0]):
                dets.append(positional.pop(0))
        flat: list[Any] = []
        for d in dets:
            flat.extend(d if isinstance(d, list) else [d])
        dets = flat
        if not dets:
            raise _usage_error(
                spec,
                f"{spec.name}() needs at least one detector.",
                fix=f"add --detector ID, e.g. {spec.usage()}.",
            )
        for d in dets:
            if not is_device(d):
                raise _usage_error(spec, f"detector {_show(d)} is not a device.")
        if len({device_label(d) for d in dets}) != len(dets):
            raise _usage_error(spec, "a detector is given twice.")
    elif dets:
        raise _usage_error(
            spec,
            f"{spec.name}() takes its devices as arguments, not from --detector.",
            fix=f"write {spec.usage()}.",
        )

    # 3. Metadata, checked as the start document will take it: the RunEngine builds that
    # document only at open_run, after start-up and staging.
    run_md = check_metadata(spec.name, keywords.pop("md", None), argument="md")
    run_md.update(check_metadata(spec.name, md, argument="--md"))
    if run_md:
        if "md" not in params:
            raise _usage_error(spec, f"{spec.name}() takes no run metadata (md).")
        keywords["md"] = check_metadata(spec.name, run_md)  # both together: the size bound

    # 4. The layout's own structure, then the signature.
    head = [dets] if spec.takes_detectors else []
    if spec.layout in ("scan", "grid", "list"):
        args, keywords = _check_groups(spec, positional, keywords, dets)
    else:
        args = positional
    try:
        bound = spec.signature.bind(*head, *args, **keywords)
    except TypeError as exc:
        raise _usage_error(spec, f"{spec.name}(): {exc}.") from None
    _check_annotations(spec, bound)
    if spec.layout == "fixed" and spec.source == "bluesky":
        _fixed_points(spec, bound)
    _check_real_devices(spec, dets, bound)
    return PlanCall(spec, tuple(bound.args), dict(bound.kwargs))


def _is_device_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(is_device(v) for v in value)


def _usage_error(spec: PlanSpec, what: str, *, fix: str | None = None) -> PlanArgumentError:
    err = PlanArgumentError(
        what,
        fix=fix or f"usage: {spec.usage()}  (calls {spec.python_form}; RULES: {RULES}).",
    )
    err.plan = spec.name
    return err


def _number(spec: PlanSpec, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _usage_error(spec, f"{what} must be a number, got {_show(value)}.")
    if not math.isfinite(float(value)):
        raise _usage_error(spec, f"{what} must be finite, got {value!r}.")
    return value


def _count(spec: PlanSpec, value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _usage_error(spec, f"{what} must be a whole number, got {_show(value)}.")
    if not float(value).is_integer():
        raise _usage_error(spec, f"{what} must be a whole number, got {value!r}.")
    if value < 1:
        raise _usage_error(spec, f"{what} must be at least 1, got {value!r}.")
    return require_points(spec.name, what, int(value))


def _whole(spec: PlanSpec, value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _usage_error(spec, f"{what} must be a whole number, got {_show(value)}.")
    if not float(value).is_integer():
        raise _usage_error(spec, f"{what} must be a whole number, got {value!r}.")
    return int(value)


def _motor(spec: PlanSpec, value: Any, what: str) -> Any:
    if not is_device(value):
        raise _usage_error(spec, f"{what} must be a motor (a device id), got {_show(value)}.")
    if not isinstance(value, DeviceRef) and not hasattr(value, "set"):
        raise _usage_error(
            spec,
            f"{what}: {device_label(value)!r} cannot be moved (it has no set()).",
            fix="scan a positioner such as an ESP300 axis or a rotation mount.",
        )
    return value


def _check_groups(
    spec: PlanSpec, positional: list[Any], keywords: dict[str, Any], dets: list[Any]
) -> tuple[list[Any], dict[str, Any]]:
    layout = spec.layout
    size = _GROUP_SIZES[layout]
    rest = list(positional)
    keywords = dict(keywords)
    if layout == "scan":
        if "num" not in keywords:
            if len(rest) % 3 != 1:
                raise _usage_error(
                    spec,
                    f"{spec.name}() takes MOTOR START STOP per motor and then NUM; got "
                    f"{len(rest)} argument(s).",
                )
            keywords["num"] = rest.pop()
        keywords["num"] = _count(spec, keywords["num"], "NUM (number of points)")
    if not rest or len(rest) % size:
        raise _usage_error(
            spec,
            f"{spec.name}() takes {_GROUP_FORMS[layout].split(' [')[0]} per motor; got "
            f"{len(rest)} argument(s).",
        )
    lengths = []
    for g in range(0, len(rest), size):
        n = g // size + 1
        group = rest[g : g + size]
        _motor(spec, group[0], f"MOTOR {n}")
        if layout == "list":
            points = group[1]
            if not isinstance(points, list) or not points:
                raise _usage_error(
                    spec,
                    f"POINTS {n} must be a list of positions, got {_show(points)}.",
                    fix="write positions as 1,2,3 or [1, 2, 3] (one point: 5,).",
                )
            for p in points:
                _number(spec, p, f"POINTS {n}")
            lengths.append(len(points))
        else:
            _number(spec, group[1], f"START {n}")
            _number(spec, group[2], f"STOP {n}")
            if layout == "grid":
                group[3] = _count(spec, group[3], f"NUM {n}")
                rest[g + 3] = group[3]
    if spec.name in ("list_scan", "rel_list_scan") and len(set(lengths)) > 1:
        raise _usage_error(
            spec,
            f"{spec.name}() moves every motor through the same number of points; got lists of "
            f"{', '.join(str(n) for n in lengths)} points.",
            fix="give every motor as many positions, or use list_grid_scan for a grid.",
        )
    # The whole trajectory is built before the run opens: its size is the bound that matters.
    motors = len(rest) // size
    if layout == "scan":
        require_points(spec.name, "num", keywords["num"], axes=motors)
    elif layout == "grid":
        nums = [rest[g + 3] for g in range(0, len(rest), size)]
        require_points(
            spec.name,
            " x ".join(f"NUM {n + 1}" for n in range(motors)),
            math.prod(nums),
            axes=motors,
        )
    elif spec.name in ("list_scan", "rel_list_scan"):
        require_points(spec.name, "POINTS", lengths[0], axes=motors)
    else:
        require_points(
            spec.name,
            " x ".join(f"POINTS {n + 1}" for n in range(motors)),
            math.prod(lengths),
            axes=motors,
        )
    return rest, keywords


def _check_annotations(spec: PlanSpec, bound: inspect.BoundArguments) -> None:
    """Types the plan declares (float, int, a motor): checked by name, before the plan runs."""
    for name, value in bound.arguments.items():
        param = spec.signature.parameters[name]
        if name in _NOT_FROM_CLI or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        ann = _ann_text(param)
        optional = ann.endswith("| None") or ann.startswith("None |")
        base = ann.replace(" | None", "").replace("None | ", "")
        if value is None and optional:
            continue
        what = f"{name}"
        if name in _DELAYS:
            _check_delay(spec, bound, name, value)
        elif base == "float":
            _number(spec, value, what)
        elif base == "int":
            if name == "num":
                bound.arguments[name] = _count(spec, value, what)
            else:
                bound.arguments[name] = _whole(spec, value, what)
        elif base == "bool":
            if not isinstance(value, bool):
                raise _usage_error(spec, f"{what} must be true or false, got {_show(value)}.")
        elif base in ("NamedMovable", "Movable"):
            _motor(spec, value, what)
        elif base in ("Sequence[float]",):
            if not isinstance(value, list | tuple) or not value:
                raise _usage_error(
                    spec,
                    f"{what} must be a list of numbers, got {_show(value)}.",
                    fix="write it as 1,2,3 or [1, 2, 3] (one value: 5,).",
                )
            for v in value:
                _number(spec, v, what)


_DELAYS = frozenset({"delay", "settle_time"})
"""Parameters that are pauses in seconds, whatever their annotation says (count's ``delay`` is
``float | Iterable[float]``)."""


def _check_delay(spec: PlanSpec, bound: inspect.BoundArguments, name: str, value: Any) -> None:
    if not isinstance(value, list | tuple):
        require_delay(spec.name, name, value)
        return
    for i, v in enumerate(value):
        require_delay(spec.name, f"{name}[{i}]", v)
    num = bound.arguments.get("num")
    if isinstance(num, int) and len(value) < num - 1:
        # bluesky's count finds this only when the list runs out, points into the run.
        raise plan_error(
            spec.name,
            name,
            value,
            f"has {len(value)} pauses; {num} points need {num - 1}",
            fix=f"give {num - 1} pauses (one between each two points), or one number for all.",
        )


def _fixed_points(spec: PlanSpec, bound: inspect.BoundArguments) -> None:
    """Points of the plans whose trajectory follows from their numbers (spirals, adaptive
    scans): estimated from bluesky's own formulas, before bluesky builds or walks it."""
    a = bound.arguments
    name = spec.name.removeprefix("rel_")
    if name in ("spiral", "spiral_fermat"):
        for key in ("dr", "nth" if name == "spiral" else "factor"):
            if not a[key] > 0:
                raise plan_error(
                    spec.name,
                    key,
                    a[key],
                    "must be > 0",
                    limit="> 0",
                    fix=f"pass a positive {key}.",
                )
        dr_y = a.get("dr_y")
        if dr_y is not None and not dr_y > 0:
            raise plan_error(
                spec.name,
                "dr_y",
                dr_y,
                "must be > 0",
                limit="> 0",
                fix="pass a positive dr_y, or leave it out.",
            )
        aspect = 1.0 if dr_y is None else dr_y / a["dr"]
        half = math.hypot(a["x_range"] / 2, a["y_range"] / (2 * aspect))
        if name == "spiral":
            rings = 1 + half / a["dr"]
            points = a["nth"] * (rings + 1) * (rings + 2) / 2  # every angle of every ring
        else:
            rings = 1.5 * half / (a["dr"] / a["factor"])
            points = rings * rings  # float ** raises OverflowError; * gives inf
        require_points(spec.name, "x_range, y_range, dr", points, axes=2)
    elif name == "spiral_square":
        require_points(spec.name, "x_num x y_num", a["x_num"] * a["y_num"], axes=2)
    elif name == "adaptive_scan":
        if not a["min_step"] > 0:
            raise plan_error(
                spec.name,
                "min_step",
                a["min_step"],
                "must be > 0",
                limit="> 0",
                fix="pass the smallest step the scan may take, > 0.",
            )
        require_points(
            spec.name, "(stop - start) / min_step", abs(a["stop"] - a["start"]) / a["min_step"] + 1
        )


def _check_real_devices(spec: PlanSpec, dets: list[Any], bound: inspect.BoundArguments) -> None:
    """With the started devices: detectors readable, absolute targets inside soft limits."""
    for d in dets:
        if not isinstance(d, DeviceRef) and not hasattr(d, "read"):
            raise _usage_error(spec, f"detector {device_label(d)!r} cannot be read.")
    if spec.layout not in ("scan", "grid", "list") and spec.name not in (
        "log_scan",
        "rel_log_scan",
    ):
        return
    relative = spec.name.startswith("rel_")
    for motor, targets in _motor_targets(spec, bound):
        if isinstance(motor, DeviceRef):
            continue
        check = getattr(motor, "check_value", None)
        if check is None:
            continue
        offset = 0.0
        if relative:
            try:
                offset = float(motor.position)
            except Exception:  # noqa: BLE001 - position unknown: bluesky checks at the move
                continue
        for target in targets:
            try:
                check(offset + target)
            except DaqbridgeError as exc:
                raise _usage_error(
                    spec,
                    f"{spec.name}(): {device_label(motor)} cannot go to {offset + target:g}: "
                    f"{exc.what}",
                    fix=exc.fix or "scan inside the axis' soft limits.",
                ) from None
            except Exception as exc:  # noqa: BLE001 - ophyd LimitError and friends
                raise _usage_error(
                    spec,
                    f"{spec.name}(): {device_label(motor)} cannot go to {offset + target:g}: {exc}",
                    fix="scan inside the axis' soft limits.",
                ) from None


def _motor_targets(spec: PlanSpec, bound: inspect.BoundArguments) -> list[tuple[Any, list[float]]]:
    if spec.name in ("log_scan", "rel_log_scan"):
        a = bound.arguments
        return [(a["motor"], [a["start"], a["stop"]])]
    rest = list(bound.arguments.get("args", ()))
    size = _GROUP_SIZES[spec.layout]
    out = []
    for g in range(0, len(rest) - len(rest) % size, size):
        group = rest[g : g + size]
        if spec.layout == "list":
            out.append((group[0], list(group[1])))
        else:
            out.append((group[0], [group[1], group[2]]))
    return out


# --- running the plan's own checks first -------------------------------------------------------


def prime(spec: PlanSpec, plan: Any) -> Generator[Any, Any, Any]:
    """Advance ``plan`` to its first message now, so its own argument checks run before the
    RunEngine gets it, and return a generator that continues exactly where it stopped.

    Plans check their arguments in the code before their first ``yield``; no message has gone to
    a device yet, so an error here is an argument error: it becomes a PlanArgumentError.
    """
    gen = iter(plan)
    try:
        first = next(gen)
    except StopIteration as stop:
        return _finished(stop.value)
    except PlanArgumentError:
        raise
    except DaqbridgeError as exc:
        err = PlanArgumentError(
            f"{spec.name}() refused its arguments: {exc.what}",
            instrument=exc.instrument,
            resource=exc.resource,
            fix=exc.fix or f"usage: {spec.usage()}.",
        )
        err.plan = spec.name
        raise err from None
    except Exception as exc:  # noqa: BLE001 - before the first message: an argument problem
        raise _usage_error(
            spec, f"{spec.name}() refused its arguments: {type(exc).__name__}: {exc}"
        ) from None
    return _resume(gen, first)


def _finished(value: Any) -> Generator[Any, Any, Any]:
    return value
    yield  # pragma: no cover - makes this a generator


def _resume(gen: Generator[Any, Any, Any], first: Any) -> Generator[Any, Any, Any]:
    """``yield from gen`` for a generator whose first message was already taken (PEP 380)."""
    msg = first
    while True:
        try:
            reply = yield msg
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown in by the RunEngine: pass it on
            try:
                msg = gen.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                msg = gen.send(reply)
            except StopIteration as stop:
                return stop.value
