"""The one exception hierarchy of daqbridge.

Every error a scientist can meet says which instrument, which port or resource, what happened
and what to do about it. The message is built from those parts so no layer can forget one, and
the parts stay available as attributes so code (the CLI, status pages, tests) can act on them
without parsing text.
"""

from __future__ import annotations

from collections.abc import Sequence


class DaqbridgeError(Exception):
    """Base of every daqbridge error.

    ``what`` is the sentence describing the failure; ``instrument`` and ``resource`` name where it
    happened; ``fix`` tells the user what to do. ``str(err)`` joins them in that order.
    """

    def __init__(
        self,
        what: str,
        *,
        instrument: str | None = None,
        resource: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.instrument = instrument
        self.resource = resource
        self.fix = fix
        super().__init__(self._compose())

    def _compose(self) -> str:
        where = []
        if self.instrument:
            where.append(f"instrument {self.instrument!r}")
        if self.resource:
            where.append(f"on {self.resource}")
        head = f"[{' '.join(where)}] " if where else ""
        tail = f" Fix: {self.fix}" if self.fix else ""
        return f"{head}{self.what}{tail}"

    def __reduce__(self):  # keep errors picklable across processes (queue server, IOC)
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[DaqbridgeError], state: dict) -> DaqbridgeError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, err._compose())
    return err


# --- hardware resources -------------------------------------------------------------------------


class ResourceError(DaqbridgeError):
    """A port, bus or VISA session could not be used."""


class ResourceTimeout(ResourceError, TimeoutError):
    """Waiting for a lease took longer than its deadline.

    Carries who holds the resource, for how long, and who else waits, because in a lab the
    interesting question is never "did it time out" but "who is hogging the port".
    """

    def __init__(
        self,
        resource: str,
        *,
        owner: str,
        holder: str | None,
        held_for: float | None,
        waiters: Sequence[str] = (),
        timeout: float,
        instrument: str | None = None,
    ) -> None:
        self.owner = owner
        self.holder = holder
        self.held_for = held_for
        self.waiters = list(waiters)
        self.timeout = timeout
        held = (
            f"held by {holder!r} for {held_for:.3f} s"
            if holder is not None and held_for is not None
            else "not held (lost or reopening)"
        )
        queue = ", ".join(repr(w) for w in self.waiters) or "nobody else"
        super().__init__(
            f"{owner!r} waited {timeout:.3f} s for {resource} without getting it: it is {held}; "
            f"waiting: {queue}.",
            instrument=instrument,
            resource=resource,
            fix="find out why the holder keeps the port so long (a hung driver, a long move "
            "inside one lease) or give this caller a longer timeout.",
        )


class LockOrderError(ResourceError):
    """A lower-ranked resource was requested while a higher-ranked one is held.

    Raised at once instead of waiting, so an ordering bug fails a test rather than hanging a lab.
    """

    def __init__(self, requested: str, requested_rank: int, held: str, held_rank: int) -> None:
        self.requested = requested
        self.requested_rank = requested_rank
        self.held = held
        self.held_rank = held_rank
        super().__init__(
            f"lock order violation: asked for {requested} (rank {requested_rank}) while holding "
            f"{held} (rank {held_rank}); resources must be taken in increasing rank.",
            resource=requested,
            fix=f"take {requested} before {held}, or release {held} first.",
        )


class PortUnavailable(ResourceError):
    """A port could not be opened: missing, unplugged, or held by another process."""

    def __init__(
        self,
        resource: str,
        reason: str,
        *,
        pid: int | None = None,
        fix: str | None = None,
        instrument: str | None = None,
    ) -> None:
        self.reason = reason
        self.pid = pid
        holder = f" (held by process {pid})" if pid else ""
        super().__init__(
            f"port unavailable: {reason}{holder}.",
            resource=resource,
            instrument=instrument,
            fix=fix
            or "check the cable and power, that the path is right (`daqbridge hardware` lists "
            "ports), and that no other program has the port open.",
        )


class SettingsConflict(ResourceError):
    """The same physical port was opened twice with different serial settings."""

    def __init__(self, resource: str, existing: dict, requested: dict) -> None:
        self.existing = dict(existing)
        self.requested = dict(requested)
        diff = {
            k: (self.existing.get(k), self.requested.get(k))
            for k in sorted(set(self.existing) | set(self.requested))
            if self.existing.get(k) != self.requested.get(k)
        }
        shown = ", ".join(f"{k}: open with {a!r}, requested {b!r}" for k, (a, b) in diff.items())
        super().__init__(
            f"port is already open with different settings ({shown}).",
            resource=resource,
            fix="instruments sharing one port must agree on its settings; correct the profile.",
        )


# --- instruments --------------------------------------------------------------------------------


class InstrumentError(DaqbridgeError):
    """An instrument misbehaved or refused a command."""


class IdentityMismatch(InstrumentError):
    """The instrument that answered is not the one the profile expects."""


class ReplyError(InstrumentError):
    """A reply was missing, late, garbled or not parseable."""

    def __init__(self, what: str, *, reply: bytes | str | None = None, **kw) -> None:
        self.reply = reply
        if reply is not None:
            what = f"{what} (reply: {reply!r})"
        super().__init__(what, **kw)


class InstrumentTimeout(ReplyError, TimeoutError):
    """The instrument did not answer in time."""


class InstrumentFault(InstrumentError):
    """The instrument itself reported an error (a queued error code, a status, OVER range)."""

    def __init__(self, what: str, *, code: int | str | None = None, **kw) -> None:
        self.code = code
        super().__init__(what, **kw)


class ValueRejected(InstrumentError, ValueError):
    """A value was refused before it reached the wire (range, type, injected terminator)."""

    def __init__(self, what: str, *, value=None, limit=None, **kw) -> None:
        self.value = value
        self.limit = limit
        super().__init__(what, **kw)


# --- configuration, plans, data, shutdown -------------------------------------------------------


class ConfigError(DaqbridgeError, ValueError):
    """A lab profile or legacy configuration is wrong. Names the file, the key and the fix."""

    def __init__(self, what: str, *, file: str | None = None, key: str | None = None, **kw):
        self.file = file
        self.key = key
        loc = ":".join(p for p in (file, key) if p)
        super().__init__(f"{loc}: {what}" if loc else what, **kw)


class PlanArgumentError(DaqbridgeError, ValueError):
    """A plan was called with arguments that cannot work (outside limits, wrong device)."""


class CatalogError(DaqbridgeError):
    """Documents could not be written to or read from the catalog."""


class ShutdownError(DaqbridgeError):
    """A shutdown phase failed or was forced after its deadline."""


def daqbridge_cause(exc: BaseException | None) -> DaqbridgeError | None:
    """The first DaqbridgeError in ``exc``'s chain of explicit causes (``exc`` itself first).

    bluesky reports an instrument's failure as ``FailedStatus(status) from error``: the words
    that name the instrument, its port and the fix are one ``__cause__`` down. Only explicit
    causes are followed: an implicit ``__context__`` is an error met while handling another,
    and the later one is what went wrong.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DaqbridgeError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None
