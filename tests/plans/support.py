"""Helpers of the plan tests: document collection and validation, catalog and simulator access."""

from __future__ import annotations

import copy
import time
from typing import Any

from event_model import DocumentNames, schema_validators

import daqbridge.sim


class Documents:
    """RunEngine subscriber: keeps every (name, doc) of the runs it sees, validates them."""

    def __init__(self, RE: Any) -> None:
        self.RE = RE
        self.items: list[tuple[str, dict]] = []
        self.callbacks: list[Any] = []
        self.token = RE.subscribe(self)

    def __call__(self, name: str, doc: dict) -> None:
        self.items.append((name, copy.deepcopy(doc)))
        for cb in self.callbacks:
            cb(name, doc)

    def close(self) -> None:
        self.RE.unsubscribe(self.token)

    def of(self, name: str) -> list[dict]:
        return [d for n, d in self.items if n == name]

    @property
    def start(self) -> dict:
        (doc,) = self.of("start")
        return doc

    @property
    def stop(self) -> dict:
        (doc,) = self.of("stop")
        return doc

    def events(self, stream: str = "primary") -> list[dict]:
        descriptors = {d["uid"] for d in self.of("descriptor") if d["name"] == stream}
        return [e for e in self.of("event") if e["descriptor"] in descriptors]

    def validate(self) -> None:
        """Every document against its event-model schema, and the run is well formed."""
        assert self.items, "no documents were emitted"
        for name, doc in self.items:
            schema_validators[DocumentNames(name)].validate(doc)
        start, stop = self.start, self.stop
        assert stop["run_start"] == start["uid"]
        descriptors = {d["uid"]: d for d in self.of("descriptor")}
        for event in self.of("event"):
            desc = descriptors[event["descriptor"]]
            inline = {k for k, v in desc["data_keys"].items() if not v.get("external")}
            assert set(event["data"]) == inline


def catalog_run(runtime: Any, uid: str) -> Any:
    """The run as the catalog serves it (after the writer has flushed it)."""
    runtime.catalog.flush(timeout=30)
    return runtime.catalog[uid]


def shutter_open(runtime: Any) -> bool:
    """The laser's shutter as the simulated laser itself has it (status byte bit 4)."""
    return bool(runtime.simulation.simulator("sim_laser").status_byte() & 4)


def esp300_sim(name: str = "sim_stage") -> Any:
    return daqbridge.sim.lookup(name)


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
