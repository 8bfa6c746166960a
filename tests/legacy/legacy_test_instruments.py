"""Small legacy instruments for the runtime tests: a counter, a crasher, a hung one, a mover.

Each records what the runtime did to it (with monotonic times) so tests assert on real calls.
"""

from __future__ import annotations

import random
import threading
import time

from daqbridge.errors import InstrumentFault, ValueRejected
from daqbridge.legacy import (
    ChannelInfo,
    Command,
    CommandResult,
    LegacyInstrument,
    Measurement,
    ParameterInfo,
)


class CounterSource(LegacyInstrument):
    """A counter and a noise channel; a settable gain; execute 'reset' and 'burst'."""

    def __init__(self, instrument_id: str = "counter", *, events: list | None = None) -> None:
        super().__init__(instrument_id)
        self.count = 0
        self.gain = 1.0
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.poll_times: list[float] = []
        self.events = events if events is not None else []
        self.handled_on: set[str] = set()
        self._rng = random.Random(1)

    def connect(self) -> None:
        self.connects += 1
        self.connected = True
        self.events.append(("connect", self.instrument_id, time.monotonic()))

    def disconnect(self) -> None:
        self.disconnects += 1
        self.connected = False
        self.events.append(("disconnect", self.instrument_id, time.monotonic()))

    def poll(self) -> list[Measurement]:
        assert self.connected, "polled while disconnected"
        self.count += 1
        self.poll_times.append(time.monotonic())
        self.events.append(("poll", self.instrument_id, time.monotonic()))
        return [
            self.measurement("count", self.count),
            self.measurement("noise", self.gain * self._rng.gauss(0, 1)),
        ]

    def handle(self, command: Command) -> CommandResult:
        self.handled_on.add(threading.current_thread().name)
        if command.kind == "set":
            try:
                self.gain = self.check_value(command.name, command.value)
            except ValueRejected as exc:
                return CommandResult.failure(exc)
            return CommandResult.success(self.gain)
        if command.kind == "query":
            if command.name == "gain":
                return CommandResult.success(self.gain)
            if command.name == "count":
                return CommandResult.success(self.count)
        if command.kind == "execute":
            if command.name == "reset":
                self.count = int(command.args.get("to", 0))
                return CommandResult.success(self.count)
            if command.name == "burst":
                for i in range(int(command.args["n"])):
                    self.publish(self.measurement("count", -i))
                return CommandResult.success()
            if command.name == "explode":
                raise RuntimeError("driver bug on purpose")
            if command.name == "fault":
                return CommandResult.failure(
                    InstrumentFault("over range", code="OVER", instrument=self.instrument_id)
                )
        return CommandResult.failure(f"unknown command {command}", instrument=self.instrument_id)

    def parameters(self) -> dict[str, ParameterInfo]:
        return {
            "gain": ParameterInfo("gain", "", settable=True, limits=(0.0, 10.0)),
            "count": ParameterInfo("count", "", settable=False, dtype="integer"),
        }

    def channels(self) -> dict[str, ChannelInfo]:
        return {
            "count": ChannelInfo("count", "", "integer"),
            "noise": ChannelInfo("noise", "V", "number"),
        }


class CrashingSource(CounterSource):
    """Fails ``connect`` on the listed connect attempts and ``poll`` on the listed polls."""

    def __init__(
        self,
        instrument_id: str = "crasher",
        *,
        bad_polls: set[int] = frozenset(),
        bad_connects: set[int] = frozenset(),
        always_fail: bool = False,
    ) -> None:
        super().__init__(instrument_id)
        self.bad_polls = set(bad_polls)
        self.bad_connects = set(bad_connects)
        self.always_fail = always_fail
        self.connect_times: list[float] = []
        self.poll_attempts = 0

    def connect(self) -> None:
        self.connect_times.append(time.monotonic())
        if self.always_fail or len(self.connect_times) in self.bad_connects:
            raise OSError(f"port gone (connect {len(self.connect_times)})")
        super().connect()

    def poll(self) -> list[Measurement]:
        self.poll_attempts += 1
        if self.poll_attempts in self.bad_polls:
            raise OSError(f"garbled reply on poll {self.poll_attempts}")
        return super().poll()


class HungSource(CounterSource):
    """Its poll blocks (a read without timeout) once ``hang`` is set, until ``release`` is set."""

    def __init__(self, instrument_id: str = "hung") -> None:
        super().__init__(instrument_id)
        self.hang = threading.Event()
        self.release = threading.Event()
        self.in_hang = threading.Event()

    def poll(self) -> list[Measurement]:
        if self.hang.is_set():
            self.in_hang.set()
            self.release.wait(30)
        return super().poll()


class MoverSource(CounterSource):
    """Execute 'move' takes ``move_time`` unless ``stop()`` ends it early; 'sleep' ignores stop."""

    def __init__(self, instrument_id: str = "mover", move_time: float = 20.0) -> None:
        super().__init__(instrument_id)
        self.move_time = move_time
        self._stop = threading.Event()
        self.moving = threading.Event()
        self.stops = 0

    def handle(self, command: Command) -> CommandResult:
        if command.kind == "execute" and command.name == "move":
            self._stop.clear()
            self.moving.set()
            stopped = self._stop.wait(self.move_time)
            self.moving.clear()
            return CommandResult.success("stopped" if stopped else "arrived")
        if command.kind == "execute" and command.name == "sleep":
            self.moving.set()
            time.sleep(float(command.args["seconds"]))
            self.moving.clear()
            return CommandResult.success("slept")
        return super().handle(command)

    def stop(self) -> bool:
        self.stops += 1
        self._stop.set()
        return True


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Bounded wait used by every test instead of bare sleeps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class SlowSource(CounterSource):
    """Every poll takes ``poll_time`` seconds (a slow serial exchange)."""

    def __init__(self, instrument_id: str = "slow", poll_time: float = 0.05) -> None:
        super().__init__(instrument_id)
        self.poll_time = poll_time

    def poll(self) -> list[Measurement]:
        time.sleep(self.poll_time)
        return super().poll()
