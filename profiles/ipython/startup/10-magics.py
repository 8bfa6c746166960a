"""``%holders``: who holds each serial port and VISA resource; ``%daqstatus``: the runtime;
bluesky's ``%wa``, ``%ct``, ``%mov``, ``%movr`` on the lab's RunEngine."""


def _daqbridge_magics() -> None:
    runtime = globals().get("runtime")
    if runtime is None:  # the lab did not start (00-daqbridge.py said why)
        return
    try:
        shell = get_ipython()  # noqa: F821 - IPython's builtin
    except NameError:  # a plain Python worker (bluesky queue server without its IPython kernel)
        return
    if shell is None:
        return
    from daqbridge.cli._session import register_magics

    register_magics(shell, runtime)


_daqbridge_magics()
del _daqbridge_magics
