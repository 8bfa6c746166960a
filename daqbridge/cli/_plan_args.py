"""Plans by name and their arguments from text, for ``daqbridge run`` and the web panel, checked
the way the lab's queue server checks them.

Why it is built this way:

* Plans come from an allow-list (:func:`plan_registry`): a name is looked up, never imported or
  evaluated, so ``daqbridge run os.system`` is just an unknown plan.
* Words are read by fixed rules and nothing else: ``5`` and ``-1.5e-3`` are numbers,
  ``true``/``false`` booleans, ``1,2,3`` and JSON arrays (``json.loads``) lists, ``key=value``
  keyword arguments, ``"text"`` strings, and a bare name is a device id. Anything else is refused
  with the rules in the message. Nothing is ever passed to ``eval``.
* What the words mean is decided by bluesky-queueserver, with the allow-lists of the lab's queue
  server (:func:`daqbridge.cli._lab.allow_lists`, the worker's plans and devices filtered by its
  permissions file): its ``validate_plan`` gives the verdict on the call, its ``prepare_plan``
  turns device ids into devices by its rules, and ``bluesky.simulators.check_limits`` walks the
  plan against the started devices' limits. So ``daqbridge run``, the web panel and the queue
  server refuse the same calls; this module only says why in the lab's words: a word where a
  number belongs is "num: expected a whole number, got 'three'", not "no device 'three'".
* What they cannot tell stays here, small: the motor groups of the bluesky plans that take
  ``*args`` (bluesky declares them ``Movable | Any``; the grouping is only in their docstrings),
  and daqbridge's bounds (points, pauses, metadata: :mod:`daqbridge.plans._checks`).
* Everything runs before the RunEngine does, twice in ``daqbridge run``: first against the
  profile's device ids (:class:`DeviceRef` placeholders, before start-up: a typo never costs the
  lab's start-up time), then against the started devices, with the limits. The plan generator
  is then advanced to its first message (:func:`prime`), which runs the plan's own checks.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import difflib
import functools
import inspect
import json
import math
import numbers
import re
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from daqbridge.errors import DaqbridgeError, PlanArgumentError
from daqbridge.plans._checks import MAX_NESTING, plan_error, require_delay, require_points
from daqbridge.plans._metadata import check_metadata

if TYPE_CHECKING:
    from daqbridge.cli._lab import AllowLists


class UnknownPlan(PlanArgumentError):
    """A plan name that is not in the allow-list."""


class UnknownDevice(PlanArgumentError):
    """A device id that the lab does not have (or does not allow)."""


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

BLUESKY_PLANS = (
    "count", "scan", "rel_scan", "list_scan", "rel_list_scan", "grid_scan", "rel_grid_scan",
    "list_grid_scan", "rel_list_grid_scan", "log_scan", "rel_log_scan", "spiral", "rel_spiral",
    "spiral_fermat", "rel_spiral_fermat", "spiral_square", "rel_spiral_square", "tune_centroid",
    "adaptive_scan", "rel_adaptive_scan",
)  # fmt: skip
"""The bluesky plans the lab offers (daqbridge's own come from ``daqbridge.plans.PLANS``)."""

# Words per motor of the bluesky plans that take their motors as ``*args``. Neither the
# signatures (``*args: Movable | Any``) nor the queue server's descriptions of them say how the
# arguments group; only the docstrings do, so it is written here once.
_GROUPED = {
    "scan": 3, "rel_scan": 3, "grid_scan": 4, "rel_grid_scan": 4, "list_scan": 2,
    "rel_list_scan": 2, "list_grid_scan": 2, "rel_list_grid_scan": 2,
}  # fmt: skip
_LAYOUT_OF_SIZE = {3: "scan", 4: "grid", 2: "list"}

_GROUP_FORMS = {
    "scan": "MOTOR START STOP [MOTOR START STOP ...] NUM",
    "grid": "MOTOR START STOP NUM [MOTOR START STOP NUM ...] [snake_axes=true]",
    "list": "MOTOR POINTS [MOTOR POINTS ...]",
}
_GROUP_CALLS = {
    "scan": "{name}([DET, ...], MOTOR, START, STOP, ..., num=NUM)",
    "grid": "{name}([DET, ...], MOTOR, START, STOP, NUM, ...)",
    "list": "{name}([DET, ...], MOTOR, [POINTS], ...)",
}

# Parameters that take Python callables or are given another way: never from the command line.
_NOT_FROM_CLI = frozenset({"per_step", "per_shot", "detectors"})

_DEVICE_WORDS = ("Movable", "Readable", "Device", "Flyable")


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
        params = list(self.signature.parameters.values())
        return [
            p
            for p in params
            if p.name not in _NOT_FROM_CLI and not (self.takes_detectors and p is params[0])
        ]

    def keywords(self) -> list[str]:
        return [
            p.name
            for p in self.parameters()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "md"
        ]

    @property
    def group_size(self) -> int:
        return _GROUPED.get(self.name, 0)

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


def _bluesky_spec(name: str, func: Callable[..., Any]) -> PlanSpec:
    """A bluesky plan's layout, from its signature: ``*args`` plans group their motors; a plan
    whose only devices are its detectors takes them as leading words (``count D1 D2 NUM``)."""
    size = _GROUPED.get(name)
    if size:
        return PlanSpec(name, func, "bluesky", _LAYOUT_OF_SIZE[size], takes_detectors=True)
    params = list(inspect.signature(func).parameters.values())[1:]
    rest = [p for p in params if p.name not in _NOT_FROM_CLI]
    moves = any(any(w in _ann_text(p) for w in _DEVICE_WORDS) for p in rest)
    return PlanSpec(name, func, "bluesky", "fixed" if moves else "count", takes_detectors=True)


@functools.cache
def plan_registry() -> dict[str, PlanSpec]:
    """Every plan ``daqbridge run`` offers, by name: the bluesky allow-list, then the lab's own.

    A daqbridge plan with the name of a bluesky plan would hide it; the lab's plans win, since
    they are the ones the lab wrote for its instruments.
    """
    import bluesky.plans as bp

    registry: dict[str, PlanSpec] = {}
    for name in BLUESKY_PLANS:
        func = getattr(bp, name, None)
        if func is not None:  # an older or newer bluesky without it
            registry[name] = _bluesky_spec(name, func)
    from daqbridge.plans import PLANS

    for name, func in PLANS.items():
        registry[name] = PlanSpec(name, func, "daqbridge", "fixed", takes_detectors=False)
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


# --- reading words ----------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)

RULES = (
    "an argument is a device id, a number (5, -1.5, 2e-3), true or false, none, a list "
    '(1,2,3 or a JSON array [1, 2, 3]; a one-element list is 5,), a quoted string ("text"), '
    "or key=VALUE for a keyword argument"
)

WHOLE = "a whole number"
NUMBER = "a number"
_LIST_FIX = "write it as 1,2,3 or [1, 2, 3] (one value: 5,)."
_POINTS_FIX = "write positions as 1,2,3 or [1, 2, 3] (one point: 5,)."


@dataclass(frozen=True)
class _Word:
    """A bare name: a device id to the queue server (which substitutes the ones it allows), or a
    word in a place that takes something else; ``where`` is where it was written."""

    name: str
    where: str

    def __repr__(self) -> str:
        return repr(self.name)


def is_device(value: Any) -> bool:
    return isinstance(value, DeviceRef) or hasattr(value, "read") or hasattr(value, "set")


def device_label(value: Any) -> str:
    return str(getattr(value, "name", None) or value)


def _clip(token: str, size: int = 60) -> str:
    """A word as shown in a message: a 100 kB argument must not become a 100 kB message."""
    return token if len(token) <= size else token[: size - 3] + "..."


def _read(token: str, where: str, *, as_string: bool = False, allow_mapping: bool = False) -> Any:
    """One word as a value by the fixed rules in :data:`RULES`, bare names as :class:`_Word`.

    ``as_string`` is for parameters declared ``str`` (a field name): the word is kept as text.
    ``allow_mapping`` accepts a JSON object (for ``md={...}``).
    """
    text = token.strip()
    if as_string:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            return text[1:-1]
        return token
    if text.startswith(("[", "{")):
        if text[0] == "{" and not allow_mapping:
            raise PlanArgumentError(
                f"{where}: {token!r}: a JSON object is only accepted for md={{...}}.",
                fix=RULES + ".",
            )
        kind = "array" if text[0] == "[" else "object"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanArgumentError(
                f"{where}: {_clip(token)!r} is not a valid JSON {kind} ({exc.msg} at character "
                f"{exc.pos}).",
                fix='write it like [1, 2.5, 3] or ["sim_meter", "sim_dmm"], or as 1,2.5,3.'
                if kind == "array"
                else 'write it like {"sample": "A1", "temperature": 295}.',
            ) from None
        except RecursionError:
            raise _too_deep(where, token) from None
        _check_depth(value, where, token)
        if kind == "object":
            if not isinstance(value, dict):
                raise PlanArgumentError(
                    f"{where}: {token!r} is not a JSON object.", fix=RULES + "."
                )
            return value
        return _from_json(value, where, token)
    if "," in text and not (text[0] in "\"'" and text[-1] == text[0] and len(text) >= 2):
        parts = [p.strip() for p in text.split(",")]
        if parts and parts[-1] == "":
            parts.pop()  # "5," is the list [5]
        if not parts or any(p == "" for p in parts):
            raise PlanArgumentError(
                f"{where}: {token!r} has an empty element.",
                fix="write lists as 1,2,3 (no empty items) or as a JSON array [1, 2, 3].",
            )
        return [_scalar(p, f"{where} item {i + 1}") for i, p in enumerate(parts)]
    return _scalar(text, where)


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


def _scalar(text: str, where: str) -> Any:
    lower = text.lower()
    if lower in ("true", "false"):
        return lower == "true"
    if lower in ("none", "null"):
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if _NAME.fullmatch(text):
        return _Word(text, where)
    raise PlanArgumentError(
        f"{where}: cannot read {text!r} (nothing is evaluated as Python).", fix=RULES + "."
    )


def _from_json(value: Any, where: str, token: str) -> Any:
    if isinstance(value, list):
        return [_from_json(v, f"{where} item {i + 1}", token) for i, v in enumerate(value)]
    if isinstance(value, str):
        return _Word(value, where)  # a device id, or the queue server says what it is not
    if isinstance(value, dict):
        raise PlanArgumentError(
            f"{where}: {token!r}: objects inside a list are not plan arguments.", fix=RULES + "."
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise PlanArgumentError(f"{where}: {value!r} is not a finite number.", fix=RULES + ".")
    return value  # numbers, booleans, null


def _unknown_device(token: str, known: Iterable[str], where: str) -> UnknownDevice:
    root = token.split(".", 1)[0]
    known = sorted(known)
    close = difflib.get_close_matches(root, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    err = UnknownDevice(
        f"{where}: no device {root!r} in this lab.{hint} Devices: {', '.join(known) or 'none'}.",
        fix="use a device id from the list (`daqbridge config check` shows the profile's "
        'devices), or quote the word ("text") if it is meant as a string.',
    )
    err.argument = where
    err.value = token
    return err


def _no_component(word: _Word, devices: Mapping[str, Any]) -> PlanArgumentError:
    """``device.component``: only declared ophyd components, never getattr on arbitrary names
    (``sim_meter.__class__`` is not an argument)."""
    root, *path = word.name.split(".")
    obj = devices[root]
    for i, part in enumerate(path):
        names = getattr(obj, "component_names", ()) or ()
        if part not in names:
            shown = ".".join([root, *path[:i]])
            return PlanArgumentError(
                f"{word.where}: {shown!r} has no component {part!r}"
                + (f"; components: {', '.join(names)}" if names else "")
                + ".",
                instrument=root,
                fix="name a component from the list, or the device itself.",
            )
        obj = getattr(obj, part)
    return _unknown_device(word.name, devices, word.where)


def _resolve_word(word: _Word, devices: Mapping[str, Any]) -> Any:
    """A bare name as the device (or declared component) it names in ``devices``."""
    root, *path = word.name.split(".")
    if root not in devices:
        raise _unknown_device(word.name, devices, word.where)
    obj = devices[root]
    if isinstance(obj, DeviceRef):
        return DeviceRef(word.name)  # what it has is known once the lab has started it
    for part in path:
        if part not in (getattr(obj, "component_names", ()) or ()):
            raise _no_component(word, devices)
        obj = getattr(obj, part)
    return obj


def _walk(value: Any, leaf: Callable[[Any], Any]) -> Any:
    if isinstance(value, list):
        return [_walk(v, leaf) for v in value]
    if isinstance(value, tuple):
        return tuple(_walk(v, leaf) for v in value)
    return leaf(value)


def parse_value(
    token: str,
    devices: Mapping[str, Any],
    *,
    where: str = "argument",
    as_string: bool = False,
    allow_mapping: bool = False,
) -> Any:
    """One command-line word as a value by the fixed rules in :data:`RULES`, device ids looked
    up in ``devices`` (the form a script or a test wants; plans go through
    :func:`build_plan_call`, where the queue server's allow-lists decide)."""
    value = _read(token, where, as_string=as_string, allow_mapping=allow_mapping)
    return _walk(value, lambda v: _resolve_word(v, devices) if isinstance(v, _Word) else v)


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


# --- the call ---------------------------------------------------------------------------------


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
    if isinstance(value, _Word):
        return value.name
    if is_device(value):
        return device_label(value)
    if isinstance(value, list | tuple):
        return f"[{', '.join(_show(v) for v in value)}]"
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


def _usage_error(spec: PlanSpec, what: str, *, fix: str | None = None) -> PlanArgumentError:
    err = PlanArgumentError(
        what, fix=fix or f"usage: {spec.usage()}  (calls {spec.python_form}; RULES: {RULES})."
    )
    err.plan = spec.name
    return err


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


def _read_words(spec: PlanSpec, tokens: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """The words as positional and keyword values (bare names as :class:`_Word`)."""
    params = spec.signature.parameters
    positional_params = [
        p for p in spec.parameters() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    has_varargs = any(p.kind is p.VAR_POSITIONAL for p in params.values())
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
            keywords[key] = _read(
                raw, f"{key}=", as_string=_is_str(param), allow_mapping=key == "md"
            )
            continue
        index = len(positional)
        target = None
        if not has_varargs and spec.layout != "count" and index < len(positional_params):
            target = positional_params[index]
        where = f"argument {index + 1}" + (f" ({target.name})" if target else "")
        positional.append(_read(token, where, as_string=_is_str(target)))
    return positional, keywords


def _is_str(param: inspect.Parameter | None) -> bool:
    return param is not None and _ann_text(param) in {"str", "str | None", "Optional[str]"}


def _take_detectors(spec: PlanSpec, detectors: Sequence[str], positional: list[Any]) -> list[Any]:
    """The detector words of a bluesky plan: ``--detector`` ids, a leading list (the Python
    form ``scan [det1,det2] motor ...``) and, for count, the leading device ids."""
    dets: list[Any] = [_read(d, "--detector") for d in detectors]
    if not spec.takes_detectors:
        if dets:
            raise _usage_error(
                spec,
                f"{spec.name}() takes its devices as arguments, not from --detector.",
                fix=f"write {spec.usage()}.",
            )
        return []
    if positional and _is_word_list(positional[0]):
        dets.extend(positional.pop(0))
    if spec.layout == "count":
        while positional and isinstance(positional[0], _Word):
            dets.append(positional.pop(0))
    return dets


def _flat(dets: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for d in dets:
        flat.extend(d if isinstance(d, list) else [d])
    return flat


def _check_detectors(spec: PlanSpec, flat: list[Any]) -> None:
    if not spec.takes_detectors:
        return
    if not flat:
        raise _usage_error(
            spec,
            f"{spec.name}() needs at least one detector.",
            fix=f"add --detector ID, e.g. {spec.usage()}.",
        )
    for d in flat:
        if not isinstance(d, _Word):
            raise _usage_error(spec, f"detector {_show(d)} is not a device.")
    if len({d.name for d in flat}) != len(flat):
        raise _usage_error(spec, "a detector is given twice.")


def _is_word_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, _Word) for v in value)


def _group_shape(
    spec: PlanSpec, rest: list[Any], keywords: dict[str, Any], lists: AllowLists
) -> None:
    """The motor groups of a ``*args`` plan fit the words (the trailing NUM of a scan moves to
    ``num=``). When they do not, a bare name that is no device is reported as one: no place can
    be told, and a misspelt motor is the likelier mistake."""
    size = spec.group_size
    if spec.layout == "scan" and "num" not in keywords and len(rest) % size == 1:
        last = rest.pop()
        keywords["num"] = _Word(last.name, "num") if isinstance(last, _Word) else last
    if rest and not len(rest) % size and (spec.layout != "scan" or "num" in keywords):
        return
    for value in [*rest, keywords.get("num")]:
        if isinstance(value, _Word) and not _allowed(value, lists):
            _raise_unplaced(value, lists)
    if spec.layout == "scan" and "num" not in keywords:
        raise _usage_error(
            spec,
            f"{spec.name}() takes MOTOR START STOP per motor and then NUM; got {len(rest)} "
            "argument(s).",
        )
    raise _usage_error(
        spec,
        f"{spec.name}() takes {_GROUP_FORMS[spec.layout].split(' [')[0]} per motor; got "
        f"{len(rest)} argument(s).",
    )


# --- the queue server's verdict ---------------------------------------------------------------

_QS_DEVICE = re.compile(r"__(DEVICE|READABLE|MOVABLE|FLYABLE)__")
_QS_OTHER = re.compile(r"\b(Any|float|int|str|bool)\b")


def _allow_lists(spec: PlanSpec, devices: Mapping[str, Any]) -> AllowLists:
    """The queue server's allow-lists for this call, from the lab worker's own code
    (:func:`daqbridge.cli._lab.allow_lists`). Only the called plan is described: a plan's
    description does not depend on the other plans (none of these takes a plan as argument),
    and describing all of them parses every docstring (about a second)."""
    from daqbridge.cli._lab import allow_lists, checked_plan

    real = {k: v for k, v in devices.items() if not isinstance(v, DeviceRef)}
    placeholders = {k: v for k, v in devices.items() if isinstance(v, DeviceRef)}
    return allow_lists({spec.name: checked_plan(spec), **real}, placeholders=placeholders)


def _allowed(word: _Word, lists: AllowLists) -> bool:
    """``device`` or ``device.component...`` in the queue server's tree of allowed devices (a
    placeholder's components are known only once the lab has started it)."""
    root, *path = word.name.split(".")
    node = lists.devices.get(root)
    if node is not None and isinstance(lists.devices_in_nspace.get(root), DeviceRef):
        return True
    for part in path:
        node = (node or {}).get("components", {}).get(part)
    return node is not None


def _device_place(param: Mapping[str, Any]) -> bool:
    """The queue server's annotation says only devices go here (``__READABLE__``,
    ``Sequence[__MOVABLE__]``, ...), not ``__MOVABLE__ | Any``."""
    kind = param.get("annotation", {}).get("type", "")
    return bool(_QS_DEVICE.search(kind)) and not _QS_OTHER.search(_QS_DEVICE.sub("", kind))


def _number_kind(param: Mapping[str, Any]) -> str | None:
    kind = param.get("annotation", {}).get("type", "").replace(" | None", "")
    if param["name"] in _DELAYS or kind == "float" or kind.startswith("float |"):
        return NUMBER
    return WHOLE if kind == "int" else None


def _wire(value: Any) -> Any:
    """The value as a queue server client sends it: device ids as strings."""
    if isinstance(value, _Word):
        return value.name
    if isinstance(value, list | tuple):
        return [_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    return value


def _merge(ours: Any, prepared: Any, devices: Mapping[str, Any]) -> Any:
    """The queue server's substitution laid over our values: a name it turned into a device is
    the device; a name it left as text stays a :class:`_Word`, for the checks below to place.
    A component of a placeholder stays a placeholder: the lab has not described it yet."""
    if isinstance(ours, _Word):
        if not isinstance(prepared, str):
            return prepared
        root = ours.name.split(".", 1)[0]
        if "." in ours.name and isinstance(devices.get(root), DeviceRef):
            return DeviceRef(ours.name)
        return ours
    if isinstance(ours, list | tuple) and isinstance(prepared, list | tuple):
        return [_merge(o, p, devices) for o, p in zip(ours, prepared, strict=False)]
    return prepared


def _refusal(
    spec: PlanSpec, qs_params: Mapping[str, Mapping[str, Any]], name: str, value: Any, why: str
) -> PlanArgumentError:
    """The queue server's refusal of parameter ``name``, in the lab's words."""
    param = qs_params.get(name, {"name": name})
    label = "NUM (number of points)" if spec.layout == "scan" and name == "num" else name
    kind = _number_kind(param)
    if isinstance(value, _Word) and kind:
        return _not_a_number(value.where, kind, value.name)
    if kind:
        return _usage_error(spec, f"{label} must be {kind}, got {_show(value)}.")
    text = param.get("annotation", {}).get("type", "")
    if text == "bool":
        return _usage_error(spec, f"{label} must be true or false, got {_show(value)}.")
    if "Sequence[float]" in text:
        if isinstance(value, _Word):
            return _not_a_number(value.where, "a list of numbers", value.name, fix=_LIST_FIX)
        return _usage_error(
            spec,
            f"{label} must be a list of numbers, got {_show(value)}.",
            fix=_LIST_FIX,
        )
    return _usage_error(spec, f"{spec.name}(): {label}={_show(value)}: {why}.")


def _validate(
    spec: PlanSpec, lists: AllowLists, args: list[Any], kwargs: dict[str, Any]
) -> inspect.BoundArguments:
    """bluesky-queueserver's ``validate_plan`` on the call as a client would submit it, then its
    ``prepare_plan`` (the worker's device substitution); refusals in the lab's words."""
    from bluesky_queueserver.manager.profile_ops import prepare_plan, validate_plan

    from daqbridge.cli._lab import QUEUE_USER_GROUP

    description = lists.plans.get(spec.name)
    if description is None:  # the permissions file forbids it: the queue server would refuse
        raise _usage_error(spec, f"the lab's queue server does not allow {spec.name}().")
    if spec.group_size:
        description = _ungrouped(description)
        lists = dataclasses.replace(lists, plans={**lists.plans, spec.name: description})
    qs_params = {p["name"]: p for p in description["parameters"]}
    try:
        bound = spec.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise _usage_error(spec, f"{spec.name}(): {exc}.") from None
    # A device id where only devices go, that the allow-list does not have: said first, in
    # the order of the words, with the close ids (the queue server would pass it on as text).
    for name, value in bound.arguments.items():
        if _device_place(qs_params.get(name, {})):
            for word in _words_in(value):
                if not _allowed(word, lists):
                    _raise_unplaced(word, lists)
    plan = {
        "name": spec.name,
        "args": _wire(args),
        "kwargs": _wire(kwargs),
        "user_group": QUEUE_USER_GROUP,
    }
    ok, message = validate_plan(plan, allowed_plans=lists.plans, allowed_devices=lists.devices)
    if not ok:
        name, why = _failed_parameter(description, plan)
        raise (
            _refusal(spec, qs_params, name, bound.arguments.get(name), why)
            if name
            else (_usage_error(spec, f"{spec.name}(): {message.splitlines()[0]}"))
        )
    prepared = prepare_plan(
        copy.deepcopy(plan),
        plans_in_nspace=lists.plans_in_nspace,
        devices_in_nspace=lists.devices_in_nspace,
        allowed_plans={QUEUE_USER_GROUP: lists.plans},
        allowed_devices={QUEUE_USER_GROUP: lists.devices},
    )
    devices = lists.devices_in_nspace
    theirs = spec.signature.bind(*prepared["args"], **prepared["kwargs"]).arguments
    for name, value in bound.arguments.items():
        bound.arguments[name] = _merge(value, theirs[name], devices)
    return bound


def _ungrouped(description: Mapping[str, Any]) -> dict[str, Any]:
    """The description with the ``*args`` of a motor-group plan unannotated, so the queue
    server converts every device id in them and leaves the groups to :func:`_check_groups`.

    bluesky annotates ``list_scan(detectors, *args: tuple[Movable | Any, list[Any]])``: each
    MOTOR, POINTS pair as one tuple, while the plan takes them flat. The queue server applies
    that to each flat argument and refuses every list_scan written the way bluesky runs it."""
    description = copy.deepcopy(dict(description))
    for param in description["parameters"]:
        if param["kind"]["name"] == "VAR_POSITIONAL":
            param.pop("annotation", None)
            param.pop("convert_device_names", None)
    return description


def _failed_parameter(description: Mapping[str, Any], plan: Mapping[str, Any]) -> tuple[str, str]:
    """Which parameter the queue server refused, from the pydantic model it validates with."""
    import pydantic
    from bluesky_queueserver.manager.profile_ops import (
        construct_parameters,
        pydantic_construct_model_class,
        pydantic_validate_model,
    )

    parameters = construct_parameters(description["parameters"])
    bound = inspect.Signature(parameters).bind(*plan["args"], **plan["kwargs"])
    try:
        model = pydantic_validate_model(bound.arguments, pydantic_construct_model_class(parameters))
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        return str(error["loc"][0]), error["msg"].lower()
    # pydantic converted it; the queue server wants the very type (2.0 is no int, "5" no int)
    for name, value in bound.arguments.items():
        out = model.__dict__.get(name)
        if type(out) is not type(value) and not isinstance(out, float | list | tuple | dict):
            return name, f"the queue server takes no {type(value).__name__} here"
    return "", ""


def _words_in(value: Any) -> Iterator[_Word]:
    if isinstance(value, _Word):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _words_in(v)


def _raise_unplaced(word: _Word, lists: AllowLists) -> NoReturn:
    """A name the queue server did not turn into a device: no such device, or no such
    component."""
    root = word.name.split(".", 1)[0]
    if "." in word.name and root in lists.devices:
        raise _no_component(word, lists.devices_in_nspace)
    raise _unknown_device(word.name, lists.devices, word.where)


# --- daqbridge's own checks (groups, bounds) ----------------------------------------------------


def _number(spec: PlanSpec, value: Any, what: str, kind: str = NUMBER) -> float:
    if isinstance(value, _Word):
        raise _not_a_number(what, kind, value.name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _usage_error(spec, f"{what} must be {kind}, got {_show(value)}.")
    if not math.isfinite(float(value)):
        raise _usage_error(spec, f"{what} must be finite, got {value!r}.")
    if kind == WHOLE and not float(value).is_integer():
        raise _usage_error(spec, f"{what} must be a whole number, got {value!r}.")
    return value


def _count(spec: PlanSpec, value: Any, what: str, where: str | None = None) -> int:
    if isinstance(value, _Word):
        raise _not_a_number(where or value.where, WHOLE, value.name)
    _number(spec, value, what, WHOLE)
    if value < 1:
        raise _usage_error(spec, f"{what} must be at least 1, got {value!r}.")
    return require_points(spec.name, what, int(value))


def _motor(spec: PlanSpec, value: Any, what: str, lists: AllowLists) -> Any:
    if isinstance(value, _Word):
        _raise_unplaced(value, lists)
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
    spec: PlanSpec, rest: list[Any], kwargs: dict[str, Any], lists: AllowLists
) -> None:
    """The roles of a ``*args`` plan's words (MOTOR START STOP [NUM] or MOTOR POINTS) and the
    size of the trajectory bluesky builds before the run opens."""
    size = spec.group_size
    lengths, nums = [], []
    for g in range(0, len(rest), size):
        n = g // size + 1
        group = rest[g : g + size]
        _motor(spec, group[0], f"MOTOR {n}", lists)
        if spec.layout == "list":
            points = group[1]
            if isinstance(points, _Word):
                raise _not_a_number(
                    f"POINTS {n}",
                    "a list of numbers",
                    points.name,
                    fix=_POINTS_FIX,
                )
            if not isinstance(points, list) or not points:
                raise _usage_error(
                    spec,
                    f"POINTS {n} must be a list of positions, got {_show(points)}.",
                    fix=_POINTS_FIX,
                )
            for p in points:
                _number(spec, p, f"POINTS {n}")
            lengths.append(len(points))
            continue
        _number(spec, group[1], f"START {n}")
        _number(spec, group[2], f"STOP {n}")
        if spec.layout == "grid":
            rest[g + 3] = _count(spec, group[3], f"NUM {n}", where=f"NUM {n}")
            nums.append(rest[g + 3])
    motors = len(rest) // size
    if spec.layout == "scan":
        kwargs["num"] = _count(spec, kwargs.get("num"), "NUM (number of points)", where="num")
        require_points(spec.name, "num", kwargs["num"], axes=motors)
    elif spec.layout == "grid":
        product = " x ".join(f"NUM {n + 1}" for n in range(motors))
        require_points(spec.name, product, math.prod(nums), axes=motors)
    elif spec.name in ("list_scan", "rel_list_scan"):
        if len(set(lengths)) > 1:
            raise _usage_error(
                spec,
                f"{spec.name}() moves every motor through the same number of points; got lists "
                f"of {', '.join(str(n) for n in lengths)} points.",
                fix="give every motor as many positions, or use list_grid_scan for a grid.",
            )
        require_points(spec.name, "POINTS", lengths[0], axes=motors)
    else:
        product = " x ".join(f"POINTS {n + 1}" for n in range(motors))
        require_points(spec.name, product, math.prod(lengths), axes=motors)


_DELAYS = frozenset({"delay", "settle_time"})
"""Parameters that are pauses in seconds, whatever their annotation says (count's ``delay`` is
``float | Iterable[float]``)."""


def _check_bounds(spec: PlanSpec, bound: inspect.BoundArguments) -> None:
    """daqbridge's bounds on what the queue server let through: points, pauses."""
    for name, value in bound.arguments.items():
        if name in _DELAYS:
            _check_delay(spec, bound, name, value)
        elif name == "num" and spec.layout != "scan" and value is not None:
            bound.arguments[name] = _count(spec, value, name)
    if spec.layout == "fixed" and spec.source == "bluesky":
        _fixed_points(spec, bound)


def _check_delay(spec: PlanSpec, bound: inspect.BoundArguments, name: str, value: Any) -> None:
    if isinstance(value, _Word):
        raise _not_a_number(value.where, NUMBER, value.name)
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


def _positive(spec: PlanSpec, key: str, value: Any, fix: str) -> None:
    if not value > 0:
        raise plan_error(spec.name, key, value, "must be > 0", limit="> 0", fix=fix)


def _fixed_points(spec: PlanSpec, bound: inspect.BoundArguments) -> None:
    """Points of the plans whose trajectory follows from their numbers (spirals, adaptive
    scans): estimated from bluesky's own formulas, before bluesky builds or walks it."""
    a = bound.arguments
    name = spec.name.removeprefix("rel_")
    if name in ("spiral", "spiral_fermat"):
        for key in ("dr", "nth" if name == "spiral" else "factor"):
            _positive(spec, key, a[key], f"pass a positive {key}.")
        dr_y = a.get("dr_y")
        if dr_y is not None:
            _positive(spec, "dr_y", dr_y, "pass a positive dr_y, or leave it out.")
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
        _positive(spec, "min_step", a["min_step"], "pass the smallest step the scan may take, > 0.")
        require_points(
            spec.name, "(stop - start) / min_step", abs(a["stop"] - a["start"]) / a["min_step"] + 1
        )


def _whole_numbers(
    qs_params: Mapping[str, Mapping[str, Any]],
    spec: PlanSpec,
    args: list[Any],
    keywords: dict[str, Any],
) -> None:
    """``1e9`` is a whole number in the lab's words; the queue server takes only an int where
    the plan declares ``int``, so a whole float becomes one before it looks."""
    try:
        bound = spec.signature.bind_partial(*range(len(args)), **dict.fromkeys(keywords))
    except TypeError:
        return  # the queue server's binding says what is wrong
    for name, index in bound.arguments.items():
        if _number_kind(qs_params.get(name, {"name": name})) != WHOLE:
            continue
        holder, key = (keywords, name) if name in keywords else (args, index)
        if not isinstance(key, int | str):
            continue  # *args: their groups are daqbridge's to check
        value = holder[key]
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            holder[key] = int(value)


# --- building the call ------------------------------------------------------------------------


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
    # 1. Words -> values; the queue server's allow-lists; the motor groups it cannot see (a
    # misspelt motor is said before anything else, as the words are read); detectors; metadata,
    # checked as the start document will take it.
    positional, keywords = _read_words(spec, tokens)
    dets = _take_detectors(spec, detectors, positional)
    lists = _allow_lists(spec, devices)
    if spec.group_size:
        _group_shape(spec, positional, keywords, lists)
        for motor in positional[:: spec.group_size]:
            if isinstance(motor, _Word) and not _allowed(motor, lists):
                _raise_unplaced(motor, lists)
    dets = _flat(dets)
    if not dets and spec.takes_detectors:
        _check_detectors(spec, dets)
    run_md = check_metadata(spec.name, keywords.pop("md", None), argument="md")
    run_md.update(check_metadata(spec.name, md, argument="--md"))
    if run_md and "md" not in spec.signature.parameters:
        raise _usage_error(spec, f"{spec.name}() takes no run metadata (md).")

    # 2. The queue server's description of the plan.
    description = lists.plans.get(spec.name, {"parameters": []})
    qs_params = {p["name"]: p for p in description["parameters"]}
    args = ([dets] if spec.takes_detectors else []) + positional
    _whole_numbers(qs_params, spec, args, keywords)

    # 3. Its verdict and its substitution. Metadata stays out of it: the queue server would turn
    # a metadata string that equals a device id into the device where md is unannotated.
    bound = _validate(spec, lists, args, keywords)
    _check_detectors(spec, dets)
    if run_md:
        bound.arguments["md"] = check_metadata(spec.name, run_md)  # both together: the size bound

    # 4. What only daqbridge knows: the groups' roles, its bounds; then leftover names.
    if spec.group_size:
        rest = list(bound.arguments.get("args", ()))
        _check_groups(spec, rest, bound.arguments, lists)
        bound.arguments["args"] = tuple(rest)
    _check_bounds(spec, bound)
    for value in bound.arguments.values():
        for word in _words_in(value):
            _raise_unplaced(word, lists)
    call = PlanCall(spec, tuple(bound.args), dict(bound.kwargs))

    # 5. With started devices: bluesky's check_limits on the plan itself.
    check_before_run(spec, call.args, call.kwargs)
    return call


# --- before the RunEngine: limits, the plan's own checks ----------------------------------------


class _PlanStopped(Exception):
    """The plan itself raised while being walked without a RunEngine."""


class _Walk:
    """The plan's messages for ``check_limits``, remembering the last ``set``; the plan's own
    exceptions come out as :class:`_PlanStopped`, so a refusal of ``check_value`` is told from
    a plan that cannot go on without the RunEngine's replies (a tune reads its detector)."""

    def __init__(self, plan: Iterable[Any]) -> None:
        self.plan = iter(plan)
        self.last_set: Any = None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            msg = next(self.plan)
        except StopIteration:
            raise
        except Exception as exc:  # noqa: BLE001 - the plan's, not check_value's
            raise _PlanStopped() from exc
        if msg.command == "set":
            self.last_set = msg
        return msg


_DRAIN = 20_000
"""Messages walked past a refused move to find the plan's farthest target for the message (with
:func:`_moves_only`, about 10 us each: a fifth of a second at most)."""


def check_before_run(spec: PlanSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """With started devices: detectors readable, and every move of the plan inside its device's
    limits, by ``bluesky.simulators.check_limits`` on a fresh copy of the plan (it calls each
    device's ``check_value``; nothing is sent to a device).

    Errors the plan raises itself are left to :func:`prime`, which reports them as argument
    errors; a plan that needs the RunEngine's replies to go on is checked as far as it gets.
    """
    dets = list(args[0]) if spec.takes_detectors and args else []
    for d in dets:
        if not isinstance(d, DeviceRef) and not hasattr(d, "read"):
            raise _usage_error(spec, f"detector {device_label(d)!r} cannot be read.")
    others = [*args[1:], *kwargs.values()] if spec.takes_detectors else [*args, *kwargs.values()]
    if not any(_movable(v) for v in others):
        return  # nothing to move (count, placeholders): walking a long plan costs ~1 ms a point
    if "per_step" in spec.signature.parameters and kwargs.get("per_step") is None:
        kwargs = {**kwargs, "per_step": _moves_only}
    walk = _Walk(spec.func(*args, **kwargs))
    try:
        _check_limits(walk)
    except _PlanStopped:
        return
    except Exception as exc:  # noqa: BLE001 - check_value's refusal: LimitError and friends
        if walk.last_set is None:
            raise
        raise _limit_error(spec, walk, exc) from None
    finally:
        close = getattr(walk.plan, "close", None)
        if close is not None:
            close()


def _moves_only(detectors: Any, step: Any, pos_cache: Any) -> Generator[Any, Any, None]:
    """The ``per_step`` of the plan walked by ``check_limits``: the same trajectory, each point
    only its moves. bluesky's own per_step triggers and reads through plan stubs: walked by
    check_limits, 1.2 ms a point (1000 points: 1.2 s); with this, 11 us a point (100,000 points:
    1.1 s), measured with ophyd.sim motors. Every motor is set at every point (bluesky skips
    unchanged ones): the same targets, each checked at least once. scan_nd checks the parameter
    names; the 1-D plans (log_scan) call it as ``(detectors, motor, position)``."""
    from bluesky import Msg

    if isinstance(step, Mapping):
        for motor, position in step.items():
            yield Msg("set", motor, position)
    else:
        yield Msg("set", step, pos_cache)


def _check_limits(walk: _Walk) -> None:
    from bluesky.run_engine import get_bluesky_event_loop
    from bluesky.simulators import check_limits, check_limits_async

    with warnings.catch_warnings():
        # check_limits warns about each device that has no check_value (a detector, a shutter):
        # those have no limits to keep, and a warning on the terminal is noise.
        warnings.simplefilter("ignore", UserWarning)
        loop = get_bluesky_event_loop()
        if loop is not None and loop.is_running():
            check_limits(walk)  # on the RunEngine's loop, where ophyd-async devices live
        else:
            asyncio.run(check_limits_async(walk))  # no RunEngine yet: ophyd v1 checks in line


def _limit_error(spec: PlanSpec, walk: _Walk, exc: Exception) -> PlanArgumentError:
    """Which device, which value, which limits. The value is the farthest target of that device
    outside its limits (a scan to 50 is refused at its first point past the limit, 22.5: the
    scientist typed 50)."""
    msg = walk.last_set
    device, first = msg.obj, msg.args[0]
    worst = first
    limits = getattr(device, "limits", None)
    if _is_pair(limits) and limits[0] < limits[1]:
        low, high = float(limits[0]), float(limits[1])
        try:
            for _, later in zip(range(_DRAIN), walk.plan, strict=False):
                if later.command == "set" and later.obj is device and _is_number(later.args[0]):
                    if _outside(later.args[0], low, high) > _outside(worst, low, high):
                        worst = later.args[0]
        except Exception:  # noqa: BLE001, S110 - the walk ends where the plan needs replies
            pass
    detail = exc.what if isinstance(exc, DaqbridgeError) else str(exc)
    if _is_pair(limits) and str(limits[0]) not in detail:
        detail += f" (limits: {limits[0]:g} to {limits[1]:g})"
    shown = f"{worst:g}" if _is_number(worst) else repr(worst)
    err = _usage_error(
        spec,
        f"{spec.name}(): {device_label(device)} cannot go to {shown}: {detail}",
        fix=(exc.fix if isinstance(exc, DaqbridgeError) else None)
        or "scan inside the axis' soft limits.",
    )
    err.instrument = device_label(device)
    err.value = worst
    err.limit = limits
    return err


def _movable(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(_movable(v) for v in value)
    return not isinstance(value, DeviceRef) and hasattr(value, "set")


def _is_pair(limits: Any) -> bool:
    return isinstance(limits, tuple | list) and len(limits) == 2 and all(map(_is_number, limits))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _outside(value: float, low: float, high: float) -> float:
    return max(low - value, value - high, 0.0)


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
