"""Queue server worker start-up for the tests (used while profiles/ipython/startup is empty).

The worker builds the daqbridge runtime from DAQBRIDGE_QS_PROFILE (unset: the embedded
simulated lab), so its RunEngine writes to the catalog in DAQBRIDGE_DATA, and exposes every
device by its id plus bluesky's basic plans and the lab's plans by name.
"""

import os

from bluesky.plans import count, grid_scan, list_scan, rel_scan, scan  # noqa: F401

from daqbridge.plans import PLANS
from daqbridge.runtime import Runtime

runtime = Runtime.from_profile(
    os.environ.get("DAQBRIDGE_QS_PROFILE") or None,
    connect_timeout=float(os.environ.get("DAQBRIDGE_QS_CONNECT_TIMEOUT", "30")),
)
RE = runtime.RE
globals().update(runtime.devices)
globals().update(PLANS)
