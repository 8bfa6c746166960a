"""The status of an operation with nothing left to do: done when returned, for both callers."""

from __future__ import annotations

from daqbridge.devices.core import COMPLETED


def test_completed_is_finished_for_ophyd_v1_and_ophyd_async_callers():
    assert COMPLETED.done and COMPLETED.success and COMPLETED.exception() is None
    COMPLETED.wait(timeout=0)  # an ophyd v1 caller's wait returns at once
    called = []
    COMPLETED.add_callback(called.append)  # bluesky's RunEngine: told at once, not later
    assert called == [COMPLETED]

    async def awaited() -> None:
        await COMPLETED  # an ophyd-async caller awaits it without suspending

    coro = awaited()
    try:
        coro.send(None)
    except StopIteration:
        pass
    else:  # pragma: no cover - the failure this test is for
        raise AssertionError("awaiting COMPLETED suspended")
