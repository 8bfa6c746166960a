"""Child process of the disk-full test: an exposure series whose frames do not fit the camera's
disk, then the ordered shutdown; what happened goes to stdout as JSON lines.

    python tests/stress/disk_full_child.py PROFILE DATA_DIR

A child process because the failure being guarded against was a segfault in libhdf5 at
interpreter exit: the parent sees it as a negative return code instead of dying with it.
Lines: ``{"kind": "event" | "stop" | "error" | "completed" | "shutdown", ...}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

#: Points of the series: more frames than the test's disk holds, whatever its overhead.
EXPOSURES_MS = [1.0, 2.0, 3.0]
POINTS_PER_EXPOSURE = 2
FRAMES_PER_POINT = 2


def emit(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"kind": kind, **fields}) + "\n")
    sys.stdout.flush()


def main() -> None:
    profile, data_dir = sys.argv[1], sys.argv[2]
    from daqbridge.errors import DaqbridgeError
    from daqbridge.plans import exposure_series
    from daqbridge.runtime import Runtime

    rt = Runtime.from_profile(profile, data_dir=data_dir, connect_timeout=30.0)
    camera = rt.devices["sim_camera"]
    camera.configure({"frames_per_point": FRAMES_PER_POINT})

    def report(name: str, doc: dict) -> None:
        if name == "event":
            emit("event", seq_num=doc["seq_num"], sum=doc["data"]["sim_camera_sum"])
        elif name == "stop":
            emit("stop", exit_status=doc["exit_status"], reason=doc["reason"])

    rt.RE.subscribe(report)
    try:
        rt.RE(exposure_series(camera, EXPOSURES_MS, frames_per_exposure=POINTS_PER_EXPOSURE))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which judges it
        seen, error = [], exc
        while error is not None and not isinstance(error, DaqbridgeError) and error not in seen:
            seen.append(error)
            error = error.__cause__ or error.__context__
        error = error if isinstance(error, DaqbridgeError) else exc
        emit(
            "error",
            type=type(error).__name__,
            message=str(error),
            path=getattr(error, "path", None),
            os_errno=getattr(error, "os_errno", None),
            free_bytes=getattr(error, "free_bytes", None),
        )
    else:
        emit("completed")
    emit("shutdown", **rt.close(reason="disk-full test").as_dict())


if __name__ == "__main__":
    main()
