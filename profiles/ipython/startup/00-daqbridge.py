"""daqbridge beamline session: start the lab and put its names in the IPython namespace.

Run with ``ipython --profile-dir=profiles/ipython``. The lab profile comes from
``$DAQBRIDGE_PROFILE`` (default: the embedded simulated lab); data goes to the profile's
``lab.data_dir`` unless ``$DAQBRIDGE_DATA`` is set. See profiles/ipython/README.md.

Names: RE, catalog, db, runtime, devices, every device by id (sim_stage_x, sim_meter, ...), bp, bps,
bpp, the lab's plans (wavelength_scan, polarization_scan, ...), bec, np, and read(device) /
sync(coroutine) for the ophyd-async devices (no await needed: read(sim_meter)).
"""


def _daqbridge_start() -> dict:
    import atexit
    import sys

    from daqbridge.cli._session import (
        build_session,
        describe_session,
        has_display,
        register_quiet_errors,
    )
    from daqbridge.errors import DaqbridgeError

    if has_display():
        try:  # interactive plots that do not block the prompt
            get_ipython().run_line_magic("matplotlib", "")  # noqa: F821 - IPython's builtin
        except Exception as exc:  # noqa: BLE001 - no GUI toolkit: tables only
            print(f"daqbridge: no interactive plots ({exc})", file=sys.stderr)
    try:
        names = build_session()
    except DaqbridgeError as exc:
        print(f"daqbridge: the lab did not start: {exc}", file=sys.stderr)
        print(
            "daqbridge: correct the profile ($DAQBRIDGE_PROFILE, `daqbridge config check FILE`) "
            "and restart IPython.",
            file=sys.stderr,
        )
        return {}
    runtime = names["runtime"]
    try:
        shell = get_ipython()  # noqa: F821 - IPython's builtin
    except NameError:  # a plain Python worker running the startup files
        shell = None
    if shell is not None:
        # A pause, an abort or an instrument's failure: one line, not bluesky's traceback (%tb).
        register_quiet_errors(shell, runtime)

    def shutdown() -> None:
        # Registered after the runtime's own atexit hook, so it runs first (LIFO): the report
        # reaches the terminal before IPython's own exit handlers.
        report = runtime.close(reason="IPython exit")
        if report.clean:
            print(f"daqbridge: lab shut down in order ({report.duration:.2f} s)", file=sys.stderr)
        else:
            print(report.format(), file=sys.stderr)

    atexit.register(shutdown)
    print(describe_session(names))
    return names


globals().update(_daqbridge_start())
del _daqbridge_start
