"""VisaSessionManager on pyvisa-sim: per-resource serialisation, parallel instruments, locks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from daqbridge.errors import (
    InstrumentTimeout,
    PortUnavailable,
    ResourceError,
    ResourceTimeout,
    SettingsConflict,
    ValueRejected,
)
from daqbridge.transport import VisaSessionManager, default_visa_manager

YAML = Path(__file__).with_name("visa_two_instruments.yaml")
SIM = f"{YAML}@sim"
DMM = "TCPIP0::192.168.1.100::INSTR"
SMU = "GPIB0::20::INSTR"


@pytest.fixture
def visa():
    mgr = VisaSessionManager(timeout=1.0)
    yield mgr
    mgr.close_all()


def test_both_instruments_from_many_threads_get_their_own_replies(visa):
    dmm = visa.session(DMM, backend=SIM)
    smu = visa.session(SMU, backend=SIM)
    problems: list[str] = []

    def worker(session, cmd_set, cmd_get, t):
        for i in range(40):
            value = t * 100 + i
            try:
                # a set and its read-back must not be split by another thread's set
                with session.lease(f"thread-{t}", timeout=10.0) as lease:
                    lease.write(f"{cmd_set} {value:.3f}")
                    got = float(lease.query(cmd_get))
                if got != value:
                    problems.append(f"{session.resource} thread {t}: set {value}, read {got}")
                idn = session.query("*IDN?")
                if ("34465A" in idn) != (session is dmm):
                    problems.append(f"{session.resource}: wrong identity {idn!r}")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{session.resource} thread {t}: {exc}")
                return

    threads = [
        threading.Thread(target=worker, args=(s, *cmds, t))
        for t in range(4)
        for s, cmds in ((dmm, ("VOLT:RANG", "VOLT:RANG?")), (smu, ("SOUR:VOLT", "SOUR:VOLT?")))
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert problems == []
    assert dmm.stats()["transactions"] == 4 * 40 * 2
    assert smu.stats()["queries"] == 4 * 40 * 2


def test_traffic_is_serialised_per_resource_only(visa):
    dmm = visa.session(DMM, backend=SIM)
    smu = visa.session(SMU, backend=SIM)
    holding = threading.Event()
    release = threading.Event()

    def hold_dmm():
        with dmm.lease("long-dmm-sequence", 5.0):
            holding.set()
            release.wait(10)

    th = threading.Thread(target=hold_dmm)
    th.start()
    try:
        assert holding.wait(5)
        t0 = time.monotonic()
        assert "MODEL 2400" in smu.query("*IDN?")  # the other instrument is not blocked
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(ResourceTimeout) as err:
            with dmm.lease("impatient", timeout=0.1):
                pass
        assert err.value.holder == "long-dmm-sequence"
    finally:
        release.set()
        th.join(10)


def test_same_resource_same_session_and_settings_conflicts(visa):
    a = visa.session(DMM, backend=SIM)
    assert visa.session(DMM, backend=SIM) is a
    # pyvisa's canonical spelling of the same resource is the same session
    assert visa.session("TCPIP0::192.168.1.100::inst0::INSTR", backend=SIM) is a
    # a relative path to the same YAML file is the same backend
    assert visa.resource_manager(SIM) is visa.resource_manager(SIM)
    with pytest.raises(SettingsConflict, match="read_termination"):
        visa.session(DMM, backend=SIM, read_termination="\r\n")
    with pytest.raises(SettingsConflict, match="rank"):
        visa.session(DMM, backend=SIM, rank=30)
    assert set(visa.sessions) == {f"{DMM} ({visa_backend()})"}


def visa_backend() -> str:
    return f"{YAML}@sim"


def test_identity_is_cached(visa):
    dmm = visa.session(DMM, backend=SIM)
    assert dmm.identity() == "Keysight Technologies,34465A,MY00000001,A.03.01"
    assert dmm.identity() == dmm.identity()
    assert dmm.stats()["queries"] == 1
    dmm.identity(refresh=True)
    assert dmm.stats()["queries"] == 2


def test_lock_exclusive_on_sim_explains_it_is_not_supported(visa):
    dmm = visa.session(DMM, backend=SIM)
    with pytest.raises(ResourceError) as err:
        with dmm.lock_exclusive(timeout=1.0):
            pass
    msg = str(err.value)
    assert "does not implement VISA locks" in msg
    assert "In-process serialisation (leases) still applies" in msg
    assert err.value.fix
    # the session is still usable and not left leased
    assert dmm.stats()["holder"] is None
    assert "34465A" in dmm.query("*IDN?")


def test_read_without_reply_times_out_with_a_clear_error(visa):
    dmm = visa.session(DMM, backend=SIM)
    dmm.write("*RST")  # a set command: nothing to read afterwards
    t0 = time.monotonic()
    with pytest.raises(InstrumentTimeout, match="no data within 0.050 s") as err:
        dmm.read(timeout=0.05)
    assert time.monotonic() - t0 < 1.0
    assert DMM in err.value.resource
    # pyvisa-sim answers an unknown query with the device's error string
    assert dmm.query("NOPE?", timeout=0.2) == "ERROR"
    assert dmm.stats()["errors"] == 1


def test_bad_input_is_refused_clearly(visa):
    with pytest.raises(ResourceError, match="not a VISA resource name"):
        visa.session("dmm", backend=SIM)
    with pytest.raises(ResourceError, match="backend"):
        visa.session(DMM, backend="sim")
    with pytest.raises(ResourceError, match="cannot load VISA backend"):
        visa.session(DMM, backend="@nosuchbackend")
    with pytest.raises(ResourceError, match="cannot load VISA backend"):
        visa.session(DMM, backend="/no/such/file.yaml@sim")
    with pytest.raises(PortUnavailable, match="not defined in the simulation file"):
        visa.session("TCPIP0::10.9.9.9::INSTR", backend=SIM)
    dmm = visa.session(DMM, backend=SIM)
    with pytest.raises(ValueRejected, match="write terminator"):
        dmm.write("VOLT:RANG 1\nOUTP ON")
    with pytest.raises(ValueRejected, match="must be a str"):
        dmm.query(b"*IDN?")  # type: ignore[arg-type]
    with pytest.raises(ResourceError, match="finite"):
        dmm.query("*IDN?", timeout=-1)


def test_close_all_fails_waiters_and_closes(visa):
    dmm = visa.session(DMM, backend=SIM)
    visa.close_all()
    with pytest.raises(ResourceError, match="closed"):
        dmm.query("*IDN?")
    again = visa.session(DMM, backend=SIM)
    assert again is not dmm and "34465A" in again.identity()


def test_status_lists_sessions(visa):
    visa.session(DMM, backend=SIM).identity()
    status = visa.status()
    (entry,) = status.values()
    assert entry["resource"] == DMM and entry["identity"].startswith("Keysight")
    assert entry["rank"] == 20


def test_default_manager_is_a_singleton():
    assert default_visa_manager() is default_visa_manager()
