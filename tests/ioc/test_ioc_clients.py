"""CA clients as a lab uses them: monitors during a move, reconnects, and several clients on
axes and meters that share one serial port while the IOC polls."""

from __future__ import annotations

import threading
import time

from tests.ioc.conftest import PREFIX, caget, caput

X = f"{PREFIX}sim_stage_x"
Y = f"{PREFIX}sim_stage_y"


def test_rbv_monitor_sees_the_motion(ioc, ca_context):
    caput(f"{X}.VELO", [1.0])  # 10 mm at 1 mm/s, 20x simulator speed: about 0.5 s
    try:
        caput(X, [0.0], timeout=30)
        rbv, dmov = ca_context.get_pvs(f"{X}.RBV", f"{X}.DMOV")
        rbv.wait_for_connection(timeout=10)
        dmov.wait_for_connection(timeout=10)
        positions: list[float] = []
        dones: list[int] = []
        got_first = threading.Event()

        def on_rbv(sub, response):
            positions.append(float(response.data[0]))
            got_first.set()

        def on_dmov(sub, response):
            dones.append(int(response.data[0]))

        sub_rbv = rbv.subscribe(data_type="time")
        sub_rbv.add_callback(on_rbv)
        sub_dmov = dmov.subscribe(data_type="time")
        sub_dmov.add_callback(on_dmov)
        assert got_first.wait(10)
        caput(X, [10.0], timeout=30)  # completes when the move has ended
        deadline = time.monotonic() + 10
        # monitors may arrive just after the put's completion
        while time.monotonic() < deadline and not (
            positions and positions[-1] == 10.0 and dones and dones[-1] == 1
        ):
            time.sleep(0.02)
        sub_rbv.clear()
        sub_dmov.clear()
        between = [p for p in positions if 0.0 < p < 10.0]
        assert len(set(between)) >= 3, positions
        assert between == sorted(between)  # the readback moved one way
        assert positions[-1] == 10.0
        assert dones[-2:] == [0, 1]
    finally:
        caput(f"{X}.VELO", [5.0])
        caput(X, [0.0], timeout=30)


def test_a_client_that_disconnects_and_reconnects(ioc):
    from caproto.threading.client import Context

    first = Context()
    (val,) = first.get_pvs(Y)
    val.wait_for_connection(timeout=10)
    val.write([1.0], wait=True, timeout=30)
    first.disconnect()

    second = Context()
    try:
        val, rbv = second.get_pvs(Y, f"{Y}.RBV")
        val.wait_for_connection(timeout=10)
        assert rbv.read(timeout=10).data[0] == 1.0
        val.write([0.0], wait=True, timeout=30)
        assert rbv.read(timeout=10).data[0] == 0.0
    finally:
        second.disconnect()

    # and ophyd devices can be made again after their first incarnation is gone
    from daqbridge.devices.epics import DaqbridgeEpicsMotor

    for _ in range(2):
        motor = DaqbridgeEpicsMotor(Y, name="stage_y")
        motor.wait_for_connection(timeout=10)
        motor.set(0.5).wait(timeout=30)
        motor.destroy()
    assert caget(f"{Y}.RBV").data[0] == 0.5
    caput(Y, [0.0], timeout=30)


def test_clients_sharing_one_port_never_interleave(ioc):
    """Two clients drive the two axes of one ESP300 (one serial port) at once while a third
    triggers the native meter and its legacy twin (one more shared port) and the IOC polls.
    The simulators record every malformed command: there must be none, and every axis must
    end exactly where it was sent."""
    from caproto.threading.client import Context

    errors_before = caget(f"{PREFIX}ioc:Errors").data[0]
    failures: list[BaseException] = []
    finals = {X: 3.0, Y: -2.0}

    def drive(pv_name: str) -> None:
        ctx = Context()
        try:
            (val,) = ctx.get_pvs(pv_name)
            val.wait_for_connection(timeout=10)
            for i in range(8):
                val.write([float((i % 4) - 1.5)], wait=True, timeout=30)
            val.write([finals[pv_name]], wait=True, timeout=30)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)
        finally:
            ctx.disconnect()

    def read_meters() -> None:
        ctx = Context()
        try:
            pvs = ctx.get_pvs(f"{PREFIX}sim_meter:Trigger", f"{PREFIX}sim_meter_legacy:Trigger")
            for pv in pvs:
                pv.wait_for_connection(timeout=10)
            for _ in range(6):
                for pv in pvs:
                    pv.write([1], wait=True, timeout=30)
                    if pv.read(timeout=10).data[0] != 0:
                        failures.append(AssertionError(f"{pv.name} reports a failed reading"))
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)
        finally:
            ctx.disconnect()

    threads = [
        threading.Thread(target=drive, args=(X,)),
        threading.Thread(target=drive, args=(Y,)),
        threading.Thread(target=read_meters),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a client is still running after 120 s"
    assert not failures, failures
    for pv, target in finals.items():
        assert caget(f"{pv}.RBV").data[0] == target
        assert caget(f"{pv}.DMOV").data[0] == 1
        assert caget(f"{pv}.MSTA").data[0] & (1 << 9) == 0  # no PROBLEM bit
    time.sleep(1.2)  # the IOC refreshes its counters once a second
    assert caget(f"{PREFIX}ioc:ProtocolErrors").data[0] == 0, bytes(
        caget(f"{PREFIX}ioc:ProtocolErrorText").data
    )
    assert caget(f"{PREFIX}ioc:Errors").data[0] == errors_before
    caput(X, [0.0], timeout=30)
    caput(Y, [0.0], timeout=30)
