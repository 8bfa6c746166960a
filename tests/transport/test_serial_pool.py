"""SerialPortPool: one handle per physical port, settings agreement, other processes, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from daqbridge.errors import (
    ConfigError,
    InstrumentTimeout,
    PortUnavailable,
    ResourceError,
    SettingsConflict,
    ValueRejected,
)
from daqbridge.transport import SerialPortPool, canonical_name, default_pool


def test_query_round_trip_returns_reply_without_terminator(pool, peer):
    port = pool.open(peer.path, baudrate=19200)
    with port.lease("esp300", timeout=1.0) as lease:
        assert lease.query(b"1TP?\n", b"\n", 1.0) == b"R1TP?"
    assert peer.received == [b"1TP?"]


def test_same_settings_give_the_same_port(pool, peer):
    a = pool.open(peer.path, baudrate=19200, rtscts=False)
    b = pool.open(peer.path, baudrate=19200)
    assert a is b
    assert list(pool.ports) == [canonical_name(peer.path)]


def test_symlink_alias_is_the_same_port(pool, peer, tmp_path):
    link = tmp_path / "usb-FTDI_esp300-if00-port0"
    os.symlink(peer.device, link)
    by_link = pool.open(str(link))
    by_device = pool.open(peer.device)
    assert by_link is by_device
    assert len(pool.ports) == 1
    assert by_link.aliases == {str(link), peer.device}
    with by_device.lease("a", 1.0) as lease:
        assert lease.query(b"x\n", b"\n", 1.0) == b"Rx"


def test_conflicting_settings_are_refused_naming_both(pool, peer):
    pool.open(peer.path, baudrate=9600)
    with pytest.raises(SettingsConflict) as err:
        pool.open(peer.path, baudrate=19200, parity="E")
    msg = str(err.value)
    assert "baudrate: open with 9600, requested 19200" in msg
    assert "parity: open with 'N', requested 'E'" in msg
    assert err.value.resource == peer.path
    # a different rank is a conflict too: lock ordering depends on it
    with pytest.raises(SettingsConflict, match="rank"):
        pool.open(peer.path, baudrate=9600, rank=12)


def test_second_process_is_refused_with_the_holder_pid(pool, peer):
    holder = textwrap.dedent(
        f"""
        import sys
        from daqbridge.transport import SerialPortPool
        pool = SerialPortPool()
        pool.open({peer.device!r})
        print("ready", flush=True)
        sys.stdin.readline()
        pool.close_all()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(PortUnavailable) as err:
            pool.open(peer.device)
        assert err.value.pid == proc.pid
        assert f"held by process {proc.pid}" in str(err.value)
        assert "already in use" in str(err.value)
    finally:
        proc.communicate("\n", timeout=20)
    # once the other process is gone the port opens normally
    port = pool.open(peer.device)
    with port.lease("after", 1.0) as lease:
        assert lease.query(b"ok\n", b"\n", 1.0) == b"Rok"


def test_second_process_is_refused_when_we_hold_it(pool, peer):
    pool.open(peer.device)
    probe = textwrap.dedent(
        f"""
        from daqbridge.errors import PortUnavailable
        from daqbridge.transport import SerialPortPool
        try:
            SerialPortPool().open({peer.device!r})
        except PortUnavailable as exc:
            print(exc.pid)
        else:
            print("opened")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == str(os.getpid())


def test_missing_device_and_unknown_url_scheme_give_clear_errors(pool, tmp_path):
    with pytest.raises(PortUnavailable, match="no such device") as err:
        pool.open(str(tmp_path / "ttyUSB9"))
    assert "daqbridge hardware" in str(err.value)
    with pytest.raises(PortUnavailable, match="no serial handler for nosuch://"):
        pool.open("nosuch://device")
    assert not pool.ports


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"baudrate": "fast"}, "baudrate"),
        ({"baudrate": 0}, "baudrate"),
        ({"parity": "X"}, "parity"),
        ({"bytesize": 9}, "bytesize"),
        ({"stopbits": 3}, "stopbits"),
        ({"rtscts": "yes"}, "rtscts"),
        ({"write_timeout": None}, "write_timeout"),
        ({"baud": 9600}, "baud"),
    ],
)
def test_bad_settings_are_refused_before_opening(pool, peer, settings, key):
    with pytest.raises(ConfigError) as err:
        pool.open(peer.path, **settings)
    assert err.value.key == key
    assert err.value.fix
    assert not pool.ports


def test_bad_port_names_and_ranks(pool, peer):
    with pytest.raises(ConfigError, match="path or URL"):
        pool.open(123)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="path or URL"):
        pool.open("  ")
    with pytest.raises(ConfigError, match="rank must be an int"):
        pool.open(peer.path, rank="high")  # type: ignore[arg-type]


def test_bad_lease_arguments(pool, peer):
    port = pool.open(peer.path)
    with pytest.raises(ResourceError, match="owner name"):
        port.lease("", 1.0)
    for bad in (-1.0, float("nan"), float("inf"), "soon"):
        with pytest.raises(ResourceError, match="every wait|number of seconds"):
            port.lease("x", bad)
    with port.lease("x", 1.0) as lease:
        with pytest.raises(ValueRejected, match="must be bytes"):
            lease.write("1TP?\n")  # type: ignore[arg-type]
        with pytest.raises(ValueRejected, match="terminator"):
            lease.read_until(b"", 1.0)
        with pytest.raises(ResourceError, match="finite"):
            lease.query(b"x\n", b"\n", float("inf"))
    with pytest.raises(ResourceError, match="outside its with-block"):
        lease.write(b"late\n")


def test_read_timeout_names_the_port_and_what_arrived(pool, make_peer):
    peer = make_peer(lambda line: b"partial" if line == b"slow" else b"R" + line + b"\n")
    port = pool.open(peer.path)
    with port.lease("newport1830", 1.0) as lease:
        with pytest.raises(InstrumentTimeout) as err:
            lease.query(b"slow\n", b"\n", 0.2)
        assert err.value.resource == peer.path
        assert err.value.reply == b"partial"
        assert "no reply ending in b'\\n' within 0.200 s" in str(err.value)
        # the partial bytes stay buffered: drain() hands them over as stale input
        assert lease.drain() == b"partial"
        assert lease.query(b"next\n", b"\n", 1.0) == b"Rnext"
    assert port.stats()["stale_bytes"] == len(b"partial")


def test_leftover_bytes_stay_for_the_next_read(pool, make_peer):
    peer = make_peer(lambda line: b"first\nsecond\n")
    port = pool.open(peer.path)
    with port.lease("a", 1.0) as lease:
        assert lease.query(b"q\n", b"\n", 1.0) == b"first"
        assert lease.read_until(b"\n", 1.0) == b"second"
        peer.send(b"stale1stale2")
        deadline = 50
        got = b""
        while len(got) < 12 and deadline:
            got += lease.read_available()
            deadline -= 1
            if len(got) < 12:
                import time

                time.sleep(0.01)
        assert got == b"stale1stale2"


def test_loop_url_works_and_counts_as_its_own_port(pool):
    port = pool.open("loop://")
    assert port.name == "loop://"
    with port.lease("loopback", 1.0) as lease:
        lease.write(b"ping\r\n")
        assert lease.read_until(b"\r\n", 1.0) == b"ping"


def test_stats_and_status(pool, peer):
    port = pool.open(peer.path)
    for i in range(5):
        with port.lease("poller", 1.0) as lease:
            lease.query(b"%d\n" % i, b"\n", 1.0)
    stats = port.stats()
    assert stats["transactions"] == 5
    assert stats["queries"] == 5
    assert stats["bytes_out"] == 5 * 2
    assert stats["bytes_in"] == 5 * 3
    assert stats["wait"]["count"] == 5 and stats["hold"]["count"] == 5
    assert set(stats["hold"]) == {"count", "mean", "p50", "p95", "max"}
    assert stats["hold"]["max"] >= stats["hold"]["p95"] >= stats["hold"]["p50"] > 0
    assert stats["holder"] is None and stats["waiters"] == []
    assert stats["state"] == "open" and stats["generation"] == 1
    with port.lease("holder-now", 1.0):
        now = port.stats()
        assert now["holder"] == "holder-now"
        assert now["held_for"] >= 0 and now["held_since"] is not None
    assert pool.status() == {port.name: pool.status()[port.name]}
    assert pool.status()[port.name]["port"] == peer.path


def test_close_all_closes_ports_and_refuses_new_leases(pool, peer):
    port = pool.open(peer.path)
    pool.close_all()
    assert port.closed and not port.is_open
    with pytest.raises(PortUnavailable, match="closed"):
        with port.lease("late", 0.5):
            pass
    # the pool opens it afresh afterwards
    again = pool.open(peer.path)
    assert again is not port
    with again.lease("new", 1.0) as lease:
        assert lease.query(b"x\n", b"\n", 1.0) == b"Rx"


def test_default_pool_is_a_process_wide_singleton():
    assert default_pool() is default_pool()
    assert isinstance(default_pool(), SerialPortPool)
