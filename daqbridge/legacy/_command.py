"""Commands sent to legacy instruments and the results they give back.

Convention (one for the whole legacy stack): problems come back as VALUES, not exceptions.
``LegacyInstrument.handle`` returns ``CommandResult(ok=False, message=..., error=...)`` when the
instrument refuses or fails a command, and ``LegacyRuntime.submit`` does the same for timeouts,
unknown instruments and drivers that raised anyway. Legacy code was written this way (status
codes, not exceptions), and it lets the ophyd adapter turn every outcome into a finished status
without try/except around each call. Callers who prefer exceptions call ``result.unwrap()``,
which raises the carried ``DaqbridgeError`` (or ``LegacyInstrumentError``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from daqbridge.errors import DaqbridgeError, InstrumentError

CommandKind = Literal["set", "query", "execute"]
_KINDS = ("set", "query", "execute")


class LegacyInstrumentError(InstrumentError):
    """A legacy instrument refused or failed a command, or its driver misbehaved."""


@dataclass(frozen=True)
class Command:
    """What to do: ``set`` a parameter, ``query`` a parameter, or ``execute`` an action.

    ``value`` is the new value of a ``set`` and the keyword arguments (a dict) of an ``execute``.
    """

    kind: CommandKind
    name: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"command kind must be one of {_KINDS}, got {self.kind!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"command name must be a non-empty string, got {self.name!r}")

    @classmethod
    def set(cls, name: str, value: Any) -> Command:
        return cls("set", name, value)

    @classmethod
    def query(cls, name: str) -> Command:
        return cls("query", name)

    @classmethod
    def execute(cls, name: str, **args: Any) -> Command:
        return cls("execute", name, dict(args))

    @property
    def args(self) -> dict[str, Any]:
        """Keyword arguments of an ``execute`` (empty for other kinds)."""
        return dict(self.value) if self.kind == "execute" and self.value else {}

    def __str__(self) -> str:
        if self.kind == "set":
            return f"set {self.name}={self.value!r}"
        if self.kind == "execute" and self.value:
            return f"execute {self.name}({', '.join(f'{k}={v!r}' for k, v in self.value.items())})"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one command. ``error`` keeps the typed exception for code that must tell a
    timeout from a refused value; ``message`` is the human text (the instrument's own words)."""

    ok: bool
    value: Any = None
    message: str = ""
    error: DaqbridgeError | None = field(default=None, compare=False)

    @classmethod
    def success(cls, value: Any = None, message: str = "") -> CommandResult:
        return cls(True, value, message)

    @classmethod
    def failure(
        cls, error: DaqbridgeError | str, *, instrument: str | None = None
    ) -> CommandResult:
        """A failed result from a typed error (preferred) or a bare message."""
        if isinstance(error, str):
            error = LegacyInstrumentError(error, instrument=instrument)
        return cls(False, None, str(error), error)

    def unwrap(self) -> Any:
        """The value, or raise the error that made the command fail."""
        if self.ok:
            return self.value
        raise self.error or LegacyInstrumentError(self.message or "command failed")

    def __bool__(self) -> bool:
        return self.ok
