"""``%holders``: who holds each serial port and VISA resource; ``%daqstatus``: the runtime."""


def _daqbridge_magics() -> None:
    runtime = globals().get("runtime")
    if runtime is None:  # the lab did not start (00-daqbridge.py said why)
        return
    from daqbridge.cli._session import register_magics

    register_magics(get_ipython(), runtime)  # noqa: F821 - IPython's builtin


_daqbridge_magics()
del _daqbridge_magics
