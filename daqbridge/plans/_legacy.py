"""Record what a legacy instrument publishes on its own, as a run in the catalog.

Why: legacy drivers poll on their own threads and publish every measurement to the distributor;
before the migration that stream went to a log file nobody could find. ``record_legacy`` turns a
stretch of it into a Bluesky run: one reading at the start and one at the end in ``primary``
(so a table of runs shows start/end values), and every published measurement in between in the
monitor stream ``<device>_monitor`` with the measurement's own timestamp.
"""

from collections.abc import Generator, Mapping
from typing import Any

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.protocols import Readable

from daqbridge.plans._capabilities import is_legacy_device
from daqbridge.plans._checks import plan_error, require_positive
from daqbridge.plans._metadata import device_name, start_metadata

__all__ = ["record_legacy"]

PLAN = "record_legacy"

MAX_DURATION_S = 7 * 24 * 3600.0
"""A week: longer recordings belong in several runs (the catalog writer keeps a run open)."""


def record_legacy(
    device: Readable,
    duration: float,
    *,
    md: Mapping[str, Any] | None = None,
) -> Generator[Any, Any, str]:
    """Record ``device``'s legacy measurement stream for ``duration`` seconds.

    Streams: ``primary`` (a fresh reading at the start and one at the end) and
    ``<device name>_monitor`` (every measurement published meanwhile, as the driver polled it).
    """
    if not is_legacy_device(device):
        raise plan_error(
            PLAN,
            "device",
            device,
            f"is not a legacy device ({type(device).__name__} is no LegacyDevice, the adapter "
            "of a legacy instrument)",
            fix="pass a legacy device (runtime.devices['<id>'] of a legacy or shadow "
            "instrument); for a native device use bp.count or bps.monitor on its signals.",
        )
    duration = require_positive(PLAN, "duration", duration)
    if duration > MAX_DURATION_S:
        raise plan_error(
            PLAN,
            "duration",
            duration,
            f"is longer than {MAX_DURATION_S:g} s",
            limit=f"<= {MAX_DURATION_S:g} s",
            fix="record several shorter runs.",
        )
    stream = f"{device_name(device)}_monitor"
    _md = start_metadata(
        PLAN,
        {"device": device, "duration": duration},
        detectors=[device],
        dimensions=[(["time"], "primary")],
        md=md,
        monitor_stream=stream,
        duration=duration,
        legacy_instrument=getattr(device, "instrument_id", None),
    )

    @bpp.stage_decorator([device])
    @bpp.run_decorator(md=_md)
    def record() -> Generator:
        yield from bps.trigger_and_read([device])
        yield from bps.monitor(device, name=stream)
        yield from bps.sleep(duration)
        yield from bps.unmonitor(device)
        yield from bps.trigger_and_read([device])

    return (yield from record())
