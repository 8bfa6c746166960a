"""Registry, sim:// URL handler, pty server and the ``daqbridge sim`` command."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import serial

import daqbridge.sim as dsim
from daqbridge.cli import main
from daqbridge.errors import ConfigError, PortUnavailable
from daqbridge.sim import _registry
from daqbridge.sim.esp300 import ESP300Simulator

IDN = b"ESP300 Version 3.04 07/27/01\r\n"


# --- registry -----------------------------------------------------------------------------------


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        dsim.create_simulator("esp301")
    for kind in ("esp300", "newport1830c", "maitai", "elliptec", "scpi"):
        assert kind in str(err.value)


def test_misspelt_option_names_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        dsim.create_simulator("esp300", reply_dealy="0.1")
    assert "reply_dealy" in str(err.value) and "reply_delay" in str(err.value)


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("speed", "fast", "number"),
        ("speed", "0", "speed"),
        ("drop_probability", "1.5", "probability"),
        ("reply_delay", "-1", ">= 0"),
        ("echo", "maybe", "boolean"),
        ("drop_next", "x", "integer"),
        ("axes", "7", "1 to 3"),
    ],
)
def test_bad_option_values_are_clear_errors(option, value, words):
    with pytest.raises(ConfigError) as err:
        dsim.create_simulator("esp300", **{option: value})
    assert words in str(err.value)


def test_string_options_are_converted_to_the_declared_types():
    sim = dsim.create_simulator(
        "esp300", speed="inf", reply_delay="0.25", echo="yes", seed="7", disconnected_axes="2,3"
    )
    assert sim.speed == float("inf") and sim.faults.reply_delay == 0.25
    assert sim.faults.echo is True and sim.faults.seed == 7
    assert not sim.axes[2].connected and not sim.axes[3].connected and sim.axes[1].connected


def test_python_values_pass_through_and_faults_object_is_exclusive():
    faults = dsim.Faults(drop_next=2)
    sim = dsim.create_simulator("newport1830c", faults=faults, optical_input=lambda: 1e-3)
    assert sim.faults is faults and sim.input_power == 1e-3
    with pytest.raises(ConfigError, match="not both"):
        dsim.create_simulator("esp300", faults=faults, echo=True)
    with pytest.raises(ConfigError, match="callable"):
        dsim.create_simulator("newport1830c", optical_input="lambda: 1")


def test_scpi_is_not_a_serial_kind():
    with pytest.raises(ConfigError, match="TCP socket"):
        dsim.create_simulator("scpi")


def test_missing_simulator_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(_registry.SERIAL_KINDS, "ghost", "daqbridge.sim.ghost:GhostSimulator")
    with pytest.raises(ConfigError, match="not available"):
        dsim.create_simulator("ghost")


def test_named_instances():
    sim = ESP300Simulator()
    assert dsim.register("stage", sim) is sim
    assert dsim.lookup("stage") is sim and "stage" in dsim.registered_names()
    dsim.register("stage", sim)  # same object again: fine
    with pytest.raises(ConfigError, match="already used"):
        dsim.register("stage", ESP300Simulator())
    other = ESP300Simulator()
    dsim.register("stage", other, replace=True)
    assert dsim.lookup("stage") is other
    assert dsim.unregister("stage") is other
    assert dsim.unregister("stage") is None
    assert dsim.lookup("stage", None) is None
    with pytest.raises(ConfigError, match="no simulator is registered as 'stage'"):
        dsim.lookup("stage")


# --- engine fixes ---------------------------------------------------------------------------------


def test_cr_alone_ends_a_command_and_crlf_is_not_an_empty_command():
    sim = ESP300Simulator()
    sim.write_from_host(b"1TP?\r")  # CR-only driver: must get its reply without an LF
    assert sim.read_to_host() == b"0.00000\r\n"
    sim.write_from_host(b"\n")  # the LF of a split CR LF
    sim.write_from_host(b"1TP\r\n")
    assert sim.read_to_host() == b"0.00000\r\n"
    assert sim.received_lines == ["1TP?", "1TP"] and sim.protocol_errors == []
    assert list(sim.error_queue) == []


def test_unsolicited_output_from_another_thread_and_listeners():
    sim = ESP300Simulator()
    calls = []
    sim.add_output_listener(lambda: calls.append(1))
    worker = threading.Thread(target=sim.emit_unsolicited, args=(b"late\r\n",))
    worker.start()
    worker.join(5)
    assert sim.read_to_host() == b"late\r\n" and calls
    sim.remove_output_listener(sim.output_ready.listeners[0])
    assert sim.output_ready.listeners == []


# --- sim:// URL handler ---------------------------------------------------------------------------


def test_url_creates_registers_and_configures(open_url, wire):
    port = open_url("sim://esp300?speed=10&name=stage&reply_delay=0.1", baudrate=19200)
    sim = dsim.lookup("stage")
    assert port.simulator is sim and sim.speed == 10 and sim.faults.reply_delay == 0.1
    port.write(b"*IDN?\r\n")
    assert wire.silent(port, 0.03)  # not before the injected delay
    assert port.read_until(b"\r\n") == IDN
    again = open_url("sim://esp300?name=stage")  # attaches to the same device
    assert again.simulator is sim


def test_url_errors_are_serial_exceptions(open_url):
    with pytest.raises(serial.SerialException, match="no simulator kind"):
        open_url("sim://")
    with pytest.raises(serial.SerialException, match="valid options"):
        open_url("sim://esp300?colour=blue")
    with pytest.raises(serial.SerialException, match="known kinds"):
        open_url("sim://nosuch")
    with pytest.raises(serial.SerialException, match="twice"):
        open_url("sim://esp300?speed=1&speed=2")
    open_url("sim://esp300?name=shared")
    with pytest.raises(serial.SerialException, match="is a esp300, not a newport1830c"):
        open_url("sim://newport1830c?name=shared")


def test_url_bare_flag_and_timeouts(open_url):
    port = open_url("sim://esp300?echo", timeout=0)
    port.write(b"1TP?\r\n")
    assert port.in_waiting == len(b"1TP?\r\n0.00000\r\n")
    assert port.read(100) == b"1TP?\r\n0.00000\r\n"
    assert port.read(10) == b""  # timeout 0: never blocks
    port.write(b"1TP?\r\n")
    port.reset_input_buffer()
    assert port.in_waiting == 0
    port.reset_output_buffer()
    port.flush()


def test_url_read_blocks_until_cancelled(open_url):
    port = open_url("sim://esp300", timeout=None)
    got = []
    reader = threading.Thread(target=lambda: got.append(port.read(5)))
    reader.start()
    time.sleep(0.05)
    assert reader.is_alive()  # nothing to read, no timeout: still waiting
    port.cancel_read()
    reader.join(5)
    assert not reader.is_alive() and got == [b""]


def test_url_read_waits_for_scheduled_reply(open_url):
    port = open_url("sim://esp300?speed=20", timeout=5)
    port.write(b"1PA1;1WS;1TP?\r\n")  # the TP? reply comes only when the move ends
    t0 = time.monotonic()
    assert port.read_until(b"\r\n") == b"1.00000\r\n"
    assert time.monotonic() - t0 < 4


def test_url_unplug_replug(open_url, wire):
    port = open_url("sim://esp300?name=stage")
    sim = port.simulator
    port.write(b"1PA2\r\n")
    sim.unplug()
    with pytest.raises(serial.SerialException, match="device disconnected"):
        port.read(1)
    with pytest.raises(serial.SerialException, match="device disconnected"):
        port.write(b"1TP?\r\n")
    with pytest.raises(serial.SerialException, match="disconnected"):
        open_url("sim://esp300?name=stage")
    sim.replug()
    with pytest.raises(serial.SerialException, match="reopen"):
        port.write(b"1TP?\r\n")  # an fd from before the unplug stays dead
    fresh = open_url("sim://esp300?name=stage")
    assert wire.query(fresh, b"1PA?\r\n") == b"2.00000\r\n"  # the device kept its state


def test_url_unplug_wakes_a_blocked_reader(open_url):
    port = open_url("sim://esp300", timeout=10)
    errors = []

    def read():
        try:
            port.read(1)
        except serial.SerialException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.05)
    port.simulator.unplug()
    reader.join(5)
    assert not reader.is_alive() and errors


def test_url_exclusive_is_advisory(open_url):
    open_url("sim://esp300?name=stage", exclusive=True)
    with pytest.raises(serial.SerialException, match="exclusively"):
        open_url("sim://esp300?name=stage", exclusive=True)
    open_url("sim://esp300?name=stage")  # a plain open still succeeds, as with flock


# --- pty server -----------------------------------------------------------------------------------


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_serve_pty_path_roundtrip_and_cleanup(open_tty, wire):
    threads_before = threading.active_count()
    fds_before = _fds()
    with dsim.serve_pty("esp300", name="stage", speed=10) as server:
        assert str(server) == server.path == os.fspath(server)
        assert os.path.islink(server.path) and os.readlink(server.path) == server.device
        assert dsim.lookup("stage") is server.simulator
        port = open_tty(server.path, 19200)
        assert wire.query(port, b"*IDN?\r\n") == IDN
        assert wire.query(port, b"1TP\r\n") == b"0.00000\r\n"
        port.close()
        tmpdir = os.path.dirname(server.path)
    assert not os.path.exists(tmpdir)
    assert dsim.lookup("stage", None) is None
    assert server.errors == []
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == threads_before
    assert _fds() - fds_before == set()


def test_serve_pty_delivers_output_from_other_threads_promptly(open_tty, wire):
    with dsim.serve_pty("esp300") as server:
        port = open_tty(server.path, 19200, timeout=5)
        t0 = time.monotonic()
        threading.Thread(target=server.simulator.inject_stale, args=(b"noise\r\n",)).start()
        assert port.read_until(b"\r\n") == b"noise\r\n"
        server.simulator.faults.reply_delay = 0.05
        port.write(b"VE?\r\n")
        assert wire.silent(port, 0.02)
        assert port.read_until(b"\r\n") == IDN
        assert time.monotonic() - t0 < 4  # generous: no poll interval of seconds


def test_serve_pty_unplug_replug(open_tty, wire):
    with dsim.serve_pty("esp300") as server:
        port = open_tty(server.path, 19200)
        port.write(b"1PA3\r\n")
        assert wire.query(port, b"1PA?\r\n") == b"3.00000\r\n"
        old_device = server.device
        server.unplug()
        assert not server.plugged and not os.path.exists(server.path)
        assert not server.simulator.connected
        with pytest.raises(serial.SerialException):
            port.write(b"1TP?\r\n")
            port.read(1)
        with pytest.raises(serial.SerialException):
            serial.Serial(server.path, 19200)
        port.close()
        server.replug()
        assert os.path.islink(server.path) and server.simulator.connected
        assert server.device is not None and os.readlink(server.path) == server.device
        fresh = open_tty(server.path, 19200)
        assert wire.query(fresh, b"1PA?\r\n") == b"3.00000\r\n"
        assert server.errors == []
        assert old_device  # the old pty is gone; the new one may reuse its number
    with pytest.raises(PortUnavailable):
        server.unplug()


def test_serve_pty_explicit_link_and_bad_links(tmp_path, open_tty, wire):
    link = tmp_path / "ttyESP"
    sim = ESP300Simulator()
    with dsim.serve_pty(sim, link=link) as server:
        assert server.path == str(link) and server.simulator is sim
        assert wire.query(open_tty(link, 19200), b"VE?\r\n") == IDN
    assert not link.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a symlink"):
        with dsim.serve_pty("esp300", link=tmp_path / "file"):
            pass
    with pytest.raises(ConfigError, match="does not exist"):
        with dsim.serve_pty("esp300", link=tmp_path / "nodir" / "tty"):
            pass
    with pytest.raises(ConfigError, match="already exists"):
        with dsim.serve_pty(sim, speed=2):
            pass


def test_serve_pty_survives_driver_reopen_and_backlog(open_tty, wire):
    with dsim.serve_pty("esp300") as server:
        first = open_tty(server.path, 19200)
        assert wire.query(first, b"VE?\r\n") == IDN
        first.close()  # no driver attached: the master must not spin on EIO
        time.sleep(0.05)
        second = open_tty(server.path, 19200)
        assert wire.query(second, b"1TP?\r\n") == b"0.00000\r\n"
        assert server.errors == []


# --- command line ---------------------------------------------------------------------------------


def test_cli_list(capsys):
    assert main(["sim", "list"]) == 0
    out = capsys.readouterr().out
    for kind in ("esp300", "newport1830c", "maitai", "elliptec", "scpi"):
        assert kind in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sim", "serve", "esp301"], "known kinds"),
        (["sim", "serve", "esp300", "--port", "5025"], "--port applies"),
        (["sim", "serve", "esp300", "-o", "noequals"], "KEY=VALUE"),
        (["sim", "serve", "esp300", "--drop-probability", "3"], "probability"),
        (["sim", "serve", "esp300", "--addresses", "2,3"], "no option 'addresses'"),
    ],
)
def test_cli_bad_arguments(argv, message, capsys):
    assert main(argv) == (2 if argv[2] == "esp301" else 1)  # an unknown kind: a usage mistake
    assert message in capsys.readouterr().err


def test_cli_scpi_without_module_is_clear(monkeypatch, capsys):
    monkeypatch.setitem(_registry.SOCKET_KINDS, "scpi", "daqbridge.sim.not_there:serve_tcp")
    assert main(["sim", "serve", "scpi"]) == 1
    assert "not available" in capsys.readouterr().err


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "daqbridge", "sim", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready:
        proc.kill()
        pytest.fail(f"no ready line; stderr: {proc.communicate(timeout=10)[1]}")
    return proc, proc.stdout.readline()


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, str, str]:
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def test_cli_serve_esp300_subprocess(tmp_path, wire):
    link = tmp_path / "esp"
    proc, line = _start("esp300", "--speed", "10", "--link", str(link), "--seed", "1")
    try:
        assert line == f"esp300 ready on {link}\n"
        with serial.Serial(str(link), 19200, timeout=5) as port:
            assert wire.query(port, b"*IDN?\r\n") == IDN
    finally:
        rc, out, err = _stop(proc, signal.SIGINT)
    assert rc == 0, err
    assert out == "" and not link.exists()


def test_cli_serve_newport_sigterm(wire):
    proc, line = _start("newport1830c", "--reply-delay", "0.01", "-o", "noise=0")
    try:
        kind, _, path = line.strip().partition(" ready on ")
        assert kind == "newport1830c"
        with serial.Serial(path, 9600, timeout=5) as port:
            assert wire.query(port, b"W?\n", b"\n") == b"0800\n"
    finally:
        rc, _, err = _stop(proc, signal.SIGTERM)
    assert rc == 0, err


def test_cli_serve_scpi_prints_visa_address():
    proc, line = _start("scpi")
    try:
        prefix, _, address = line.strip().partition(" ready on ")
        assert prefix == "scpi"
        board, host, port, suffix = address.split("::")
        assert (board, host, suffix) == ("TCPIP0", "127.0.0.1", "SOCKET")
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"*IDN?\n")
            assert b"," in conn.recv(1024)
    finally:
        rc, _, err = _stop(proc, signal.SIGINT)
    assert rc == 0, err


def test_a_simulator_module_declares_its_kind_in_one_line(tmp_path):
    """A new simulator is found from its own module (``SIMULATOR = "serial:Class"``), with no
    line in the registry; private modules and modules without the line are not kinds; a module
    that does not even import still lists its kind (it fails when used, with a clear error)."""
    (tmp_path / "lamp.py").write_text(
        'class LampSimulator: ...\n\nSIMULATOR = "serial:LampSimulator"\n'
    )
    (tmp_path / "horn.py").write_text('def serve(): ...\n\nSIMULATOR = "socket:serve"\n')
    (tmp_path / "broken.py").write_text('this is not python (\nSIMULATOR = "serial:Broken"\n')
    (tmp_path / "_helpers.py").write_text('SIMULATOR = "serial:Nope"\n')
    (tmp_path / "notes.py").write_text("# SIMULATOR = 'serial:Nope' only in a comment\n")
    kinds = _registry._declared_kinds(tmp_path)
    assert kinds == {
        "serial": {
            "broken": "daqbridge.sim.broken:Broken",
            "lamp": "daqbridge.sim.lamp:LampSimulator",
        },
        "socket": {"horn": "daqbridge.sim.horn:serve"},
    }


def test_the_packaged_simulators_are_the_kinds_the_drivers_name():
    from daqbridge.devices import known_drivers

    named = {spec.simulator for spec in known_drivers().values() if spec.simulator}
    assert named <= set(_registry.known_kinds())
    assert {"esp300", "newport1830c", "maitai", "elliptec"} <= set(_registry.SERIAL_KINDS)
    assert set(_registry.SOCKET_KINDS) == {"scpi"}
