"""Child process of the crash campaign: start the runtime, count the camera and the meter, print
every event as it is emitted (after the catalog writer has logged it), until killed.

    python tests/stress/crash_child.py PROFILE DATA_DIR POINTS

Lines on stdout: ``READY``, ``START <uid>``, ``RESOURCE <uri of the camera's HDF5 file>``,
``EVENT <seq_num>`` (flushed one by one), so the parent knows which events were emitted before
its ``kill -9`` and which file holds their frames.
"""

from __future__ import annotations

import sys


def main() -> None:
    profile, data_dir, points = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import bluesky.plans as bp

    from daqbridge.runtime import Runtime

    rt = Runtime.from_profile(profile, data_dir=data_dir, connect_timeout=30.0)
    rt.sd.baseline = []  # every EVENT printed is a point with its frame

    def report(name: str, doc: dict) -> None:
        # Subscribed after the runtime's catalog writer: the line is in the write-ahead log
        # by the time this prints.
        if name == "event":
            sys.stdout.write(f"EVENT {doc['seq_num']}\n")
            sys.stdout.flush()
        elif name == "start":
            sys.stdout.write(f"START {doc['uid']}\n")
            sys.stdout.flush()
        elif name == "stream_resource":
            sys.stdout.write(f"RESOURCE {doc['uri']}\n")
            sys.stdout.flush()

    rt.RE.subscribe(report)
    print("READY", flush=True)
    rt.RE(bp.count([rt.devices["sim_camera"], rt.devices["sim_meter"]], points), crash="kill -9")
    rt.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
