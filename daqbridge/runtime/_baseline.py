"""The baseline stream: each instrument's reading and settings at the start and end of a run.

bluesky's ``SupplementalData`` takes the readings (``trigger`` then ``read`` after
``open_run`` and before ``close_run``, into the stream ``baseline``); this module only chooses
what it reads and makes each read ask the instrument.

Why a wrapper (:class:`BaselineReading`) rather than the devices themselves:

* An instrument's settings (a meter's wavelength, an SMU's range) are ophyd *configuration*,
  which bluesky records once per stream in the descriptor, not in events. The baseline is about
  exactly those values, so the wrapper reads them as data.
* Every value in the catalog must be one the instrument reported, never a cached or commanded
  one. The wrapper's ``trigger`` asks the instrument again through the driver's own public way
  of doing so: ``refresh_configuration()`` (legacy adapters and the native ESP300 axes,
  Elliptec mounts and MaiTai: each queries its settings in one lease, never sending a command
  that changes them), then the device's ``trigger()`` for its readings. A device with neither
  records its settings as last reported. An ophyd-async device (the Newport 1830-C) has a
  coroutine ``refresh_configuration()``, run on its own loop from the baseline's thread; its
  ``read()`` then asks the instrument for each reading, and a SCPI instrument's
  ``read_configuration()`` asks its settings (``*IDN?`` and every config query, one lease).
* A camera's ``trigger`` takes an exposure: a camera named in the baseline gives its settings
  only, and never triggers. Cameras are left out of the default baseline.
* A baseline read runs on a thread of its own with a deadline: a lost instrument fails the run
  with the instrument's error, as a primary read would, and never blocks the RunEngine's loop.
* The closing reading is taken when the run closes as ``success`` (also ``RE.stop()``), not
  when it fails or is aborted (:class:`LabBaseline`): an abort must end promptly within its
  shutdown deadline, and a run that failed on an instrument must not wait on it again, nor
  have its error replaced by a second one.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Mapping
from typing import Any

from bluesky.preprocessors import SupplementalData

from daqbridge.devices.core import CallTimeout, call_sync, is_async_device, maybe_sync
from daqbridge.errors import ConfigError, DaqbridgeError, InstrumentError, InstrumentTimeout

BASELINE_TIMEOUT = 30.0
"""Seconds one instrument's baseline read may take before the run fails on it."""


def takes_exposures(device: Any) -> bool:
    """True for detectors whose trigger acquires frames (they write external assets)."""
    return callable(getattr(device, "collect_asset_docs", None))


def _has_readings(device: Any) -> bool:
    if not (callable(getattr(device, "describe", None)) and hasattr(device, "name")):
        return False
    describe_config = getattr(device, "describe_configuration", None)
    # An ophyd-async device describes itself in coroutines (no wire traffic): run on its loop.
    if maybe_sync(device.describe(), device=device):
        return True
    return bool(callable(describe_config) and maybe_sync(describe_config(), device=device))


def _root_of(device: Any) -> Any:
    """The instrument's device: ophyd's ``root``, or the top parent of an ophyd-async part."""
    root = getattr(device, "root", None)
    if root is not None:
        return root
    node = device
    while getattr(node, "parent", None) is not None:
        node = node.parent
    return node


class BaselineReading:
    """One device in the baseline stream: its readings and its configuration, asked anew.

    Readable, configurable (empty: the configuration is in the readings) and triggerable in
    bluesky's sense, so ``SupplementalData`` reads it like any device.
    """

    def __init__(
        self,
        device: Any,
        *,
        instrument: str | None = None,
        resource: str | None = None,
        timeout: float = BASELINE_TIMEOUT,
    ) -> None:
        self.device = device
        self.name: str = device.name
        self.parent = None
        self.instrument = instrument or self.name
        self.resource = resource
        self.timeout = timeout
        self._root = _root_of(device)
        self._settings_only = takes_exposures(self._root)
        self._async = is_async_device(device)
        """An ophyd-async device: its reads are coroutines, awaited by the RunEngine."""

    def __repr__(self) -> str:
        return f"<BaselineReading {self.name}>"

    # --- what it records ----------------------------------------------------------------------

    def _parts(self, reading: str, configuration: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not self._settings_only:
            out.update(getattr(self.device, reading)())
        config = getattr(self.device, configuration, None)
        if callable(config):
            out.update(config())
        return out

    async def _parts_async(self, reading: str, configuration: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not self._settings_only:
            out.update(await getattr(self.device, reading)())
        config = getattr(self.device, configuration, None)
        if callable(config):
            out.update(await config())
        return out

    def describe(self) -> Any:
        if self._async:
            return self._parts_async("describe", "describe_configuration")
        return self._parts("describe", "describe_configuration")

    def read(self) -> Any:
        if self._async:
            # Each read asks the instrument: the settings were refreshed by trigger(), the
            # readings (the meter's power) are taken now.
            return self._parts_async("read", "read_configuration")
        return self._parts("read", "read_configuration")

    def describe_configuration(self) -> dict[str, Any]:
        return {}

    def read_configuration(self) -> dict[str, Any]:
        return {}

    # --- asking the instrument ------------------------------------------------------------------

    def trigger(self) -> Any:
        """Ask the instrument for its settings and readings now (off the RunEngine's loop)."""
        from ophyd.status import Status

        status = Status()

        def ask() -> None:
            try:
                self._ask()
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the run
                status.set_exception(self._in_instrument_words(exc))
            else:
                status.set_finished()

        threading.Thread(target=ask, name=f"daqbridge-baseline-{self.name}", daemon=True).start()
        return status

    def _ask(self) -> None:
        root = self._root
        refresh = getattr(root, "refresh_configuration", None)
        if is_async_device(root):
            # ophyd-async: the settings asked on the device's loop (this thread waits, bounded);
            # read() then takes the readings, each one a fresh exchange.
            if callable(refresh):
                self._bounded(lambda: refresh(), root)
            return
        if callable(refresh):
            refresh(timeout=self.timeout)
        trigger = getattr(root, "trigger", None)
        if self._settings_only or not callable(trigger):
            return
        from ophyd.utils import WaitTimeoutError

        try:
            trigger().wait(timeout=self.timeout)
        except WaitTimeoutError:
            raise InstrumentTimeout(
                f"the baseline reading did not finish within {self.timeout:g} s.",
                instrument=self.instrument,
                resource=self.resource,
                fix="check that the instrument is powered and connected; to run without it, "
                "leave it out of [lab] baseline in the profile.",
            ) from None

    def _bounded(self, work: Any, root: Any) -> None:
        try:
            call_sync(work, device=root, timeout=self.timeout)
        except CallTimeout:
            raise InstrumentTimeout(
                f"the baseline reading did not finish within {self.timeout:g} s.",
                instrument=self.instrument,
                resource=self.resource,
                fix="check that the instrument is powered and connected; to run without it, "
                "leave it out of [lab] baseline in the profile.",
            ) from None

    def _in_instrument_words(self, exc: BaseException) -> BaseException:
        if isinstance(exc, DaqbridgeError) or not isinstance(exc, Exception):
            return exc
        cause = exc.__cause__
        if isinstance(cause, DaqbridgeError):
            return cause
        err = InstrumentError(
            f"the baseline reading failed: {type(exc).__name__}: {exc}",
            instrument=self.instrument,
            resource=self.resource,
            fix="check that the instrument is powered and connected; to run without it, leave "
            "it out of [lab] baseline in the profile.",
        )
        err.__cause__ = exc
        return err


def default_baseline(devices: Mapping[str, Any], twins: Iterable[str]) -> list[str]:
    """Device ids of the default baseline: every device with something to read, except the
    legacy twins of shadow instruments (their native device is there already) and cameras
    (a baseline must not take an exposure)."""
    skip = set(twins)
    return [
        device_id
        for device_id, device in devices.items()
        if device_id not in skip and not takes_exposures(device) and _has_readings(device)
    ]


def resolve(name: str, devices: Mapping[str, Any], *, profile: str | None = None) -> Any:
    """The device a baseline name means: a device id, or ``id.component`` through declared
    ophyd components only (as the command line resolves plan arguments)."""
    root, *path = name.split(".")
    if root not in devices:
        raise ConfigError(
            f"lab.baseline names {root!r}, which did not start in this lab.",
            file=profile,
            key="lab.baseline",
            fix=f"devices: {', '.join(sorted(devices)) or 'none'}; an instrument that failed "
            "to start (allow_partial) cannot be in the baseline.",
        )
    obj = devices[root]
    for i, part in enumerate(path):
        if is_async_device(obj):
            names = tuple(name for name, _ in obj.children())
        else:
            names = getattr(obj, "component_names", ()) or ()
        if part not in names:
            shown = ".".join([root, *path[: i + 1]])
            raise ConfigError(
                f"lab.baseline names {shown!r}, but {'.'.join([root, *path[:i]])!r} has no "
                f"component {part!r}.",
                file=profile,
                key="lab.baseline",
                fix=f"components: {', '.join(names) or 'none'}; or name the device itself.",
            )
        obj = getattr(obj, part)
    return obj


class LabBaseline(SupplementalData):
    """bluesky's SupplementalData whose closing baseline reading is skipped for a run that
    fails or is aborted (its exit status in ``close_run``); monitors and flyers as bluesky's."""

    def __call__(self, plan: Any) -> Generator[Any, Any, Any]:
        from bluesky.preprocessors import fly_during_wrapper, monitor_during_wrapper

        plan = fly_during_wrapper(plan, self.flyers)
        plan = monitor_during_wrapper(plan, self.monitors)
        plan = _baseline_wrapper(plan, list(self.baseline))
        return (yield from plan)


def _baseline_wrapper(plan: Any, devices: list[Any], name: str = "baseline") -> Any:
    """bluesky's ``baseline_wrapper``, reading at ``close_run`` only for a successful run."""
    from bluesky.plan_stubs import declare_stream, trigger_and_read
    from bluesky.preprocessors import plan_mutator, set_run_key_wrapper

    def in_run(stub: Any, run: Any) -> Any:
        return stub if run is None else set_run_key_wrapper(stub, run)

    def head() -> Generator[Any, Any, None]:
        yield from declare_stream(*devices, name=name)
        yield from trigger_and_read(devices, name=name)

    def insert_baseline(msg: Any) -> tuple[Any, Any]:
        if msg.command == "open_run":
            return None, in_run(head(), msg.run)
        if msg.command == "close_run" and msg.kwargs.get("exit_status") in (None, "success"):

            def post_baseline() -> Generator[Any, Any, Any]:
                yield from in_run(trigger_and_read(devices, name=name), msg.run)
                return (yield msg)

            return post_baseline(), None
        return None, None

    if not devices:
        return (yield from plan)
    return (yield from plan_mutator(plan, insert_baseline))
