"""The panel's link to the lab that is up: the queue server's state, the worker's status report
and the live documents, kept current on threads of their own and published to the pages.

Everything goes through the engines ``daqbridge lab up`` runs: bluesky-queueserver-api for the
queue and the worker (``lab_panel_status``, see _worker.py), the lab's 0MQ document proxy for
documents (the same subscriber as ``daqbridge run``'s live table, hello handshake included).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any

from daqbridge.cli._lab import LabDocuments, LabState, _api, _drop_requeued
from daqbridge.web._camera import CameraView
from daqbridge.web._hub import Hub
from daqbridge.web._worker import STATUS_FUNCTION

QUEUE_EVERY = 0.5
"""Seconds between two looks at the queue server (its state; progress comes with the events)."""
STATUS_EVERY = 1.0
"""Seconds between two status reports from the worker (lease table, connections, values)."""
STATUS_EVERY_RUNNING = 5.0
"""The same while a plan runs: each report takes the worker's interpreter from the RunEngine
(the queue server's machinery around the call costs more than the report itself), and a scan's
own events already show its progress."""
FOLLOW_POLLING = 0.2
"""Seconds between the API's own polls while it waits for a report: the RE Manager shares the
machine with the scan, and a report two tenths of a second late changes nothing on the page."""
WORKER_ANSWER = 15.0
"""Seconds the worker may take for one status report on a loaded machine."""
RUN_EVENTS = 20_000
"""Events of the current run kept for a page that opens mid-run."""
PANEL_USER = "daqbridge web"


class CurrentRun:
    """The documents of the run going on (or of the last one), for pages that open late."""

    def __init__(self) -> None:
        self.start: dict[str, Any] | None = None
        self.descriptors: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.stop: dict[str, Any] | None = None

    def add(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.__init__()
            self.start = doc
        elif name == "descriptor":
            self.descriptors.append(doc)
        elif name == "event" and len(self.events) < RUN_EVENTS:
            self.events.append(doc)
        elif name == "event_page":
            from event_model import unpack_event_page

            for event in unpack_event_page(doc):
                self.add("event", event)
        elif name == "stop":
            self.stop = doc

    def documents(self) -> list[tuple[str, dict[str, Any]]]:
        if self.start is None:
            return []
        docs: list[tuple[str, dict[str, Any]]] = [("start", self.start)]
        docs += [("descriptor", d) for d in self.descriptors]
        docs += [("event", e) for e in self.events]
        if self.stop is not None:
            docs.append(("stop", self.stop))
        return docs


class LabLink:
    """Keeps the panel's picture of the lab and publishes every change to the hub."""

    def __init__(self, state: LabState, hub: Hub) -> None:
        self.state = state
        self.hub = hub
        self.manager: dict[str, Any] = {}
        self.queue: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.worker: dict[str, Any] = {}
        self.worker_error: str | None = None
        self.run = CurrentRun()
        self.submitted: set[str] = set()
        """Items this panel queued: a failed or aborted one is taken off the queue again."""
        self.lock = threading.Lock()
        self.control = _api(state)
        self.control_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.camera = CameraView(hub)
        self._documents = LabDocuments(state.documents_out, [self._on_document])

    # --- lifetime ---------------------------------------------------------------------------

    def start(self) -> bool:
        """Start following the lab; True once the document stream is confirmed."""
        for target, name in ((self._follow_queue, "queue"), (self._follow_worker, "worker")):
            thread = threading.Thread(target=target, name=f"daqbridge-web-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.camera.start()
        return self._documents.start()

    def close(self) -> None:
        self._stopping.set()
        self._documents.stop()
        self.camera.close()
        for thread in self._threads:
            thread.join(5)
        with contextlib.suppress(Exception):
            self.control.close()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "lab": {
                    "profile": self.state.profile_label,
                    "data_dir": self.state.data_dir,
                    "control": self.state.control_addr,
                },
                "manager": self.manager,
                "queue": self.queue,
                "history": self.history,
                "worker": self.worker,
                "worker_error": self.worker_error,
                "documents": [{"name": n, "doc": d} for n, d in self.run.documents()],
                "frame": self.camera.latest,
            }

    # --- documents --------------------------------------------------------------------------

    def _on_document(self, name: str, doc: dict[str, Any]) -> None:
        with self.lock:
            self.run.add(name, doc)
        self.hub.publish("doc", {"name": name, "doc": doc, "received": time.time()})
        self.camera.on_document(name, doc)

    # --- the queue server -------------------------------------------------------------------

    def _follow_queue(self) -> None:
        api = _api(self.state, status_polling_period=FOLLOW_POLLING)
        seen_queue = seen_history = None
        try:
            while not self._stopping.is_set():
                try:
                    status = api.status(reload=True)
                    changed = {"manager": _manager_view(status)}
                    if status["plan_queue_uid"] != seen_queue:
                        seen_queue = status["plan_queue_uid"]
                        reply = api.queue_get()
                        changed["queue"] = [_item_view(i) for i in reply["items"]]
                        if reply.get("running_item"):
                            changed["manager"]["running"] = _item_view(reply["running_item"])
                    if status["plan_history_uid"] != seen_history:
                        seen_history = status["plan_history_uid"]
                        items = api.history_get()["items"]
                        self._drop_failed(api, items)
                        changed["history"] = [_item_view(i) for i in items[-20:]][::-1]
                except Exception as exc:  # noqa: BLE001 - the manager restarts or is busy
                    changed = {"manager": {"error": f"the RE Manager does not answer: {exc}"}}
                with self.lock:
                    if "running" not in changed["manager"] and self.manager.get("running"):
                        if changed["manager"].get("running_item_uid"):
                            changed["manager"]["running"] = self.manager["running"]
                    for key, value in changed.items():
                        setattr(self, key, value)
                for key, value in changed.items():
                    self.hub.publish(key, value)
                self._stopping.wait(QUEUE_EVERY)
        finally:
            api.close()

    def _drop_failed(self, api: Any, items: list[Mapping[str, Any]]) -> None:
        """The queue server puts a failed or aborted plan back at the front of the queue; a plan
        the panel queued ran once (as with ``daqbridge run``), so it goes again."""
        for item in items:
            uid = item.get("item_uid")
            if uid not in self.submitted:
                continue
            self.submitted.discard(uid)
            if item.get("result", {}).get("exit_status") in ("failed", "aborted", "halted"):
                with self.control_lock:
                    _drop_requeued(self.control, item)

    # --- the worker -------------------------------------------------------------------------

    def _follow_worker(self) -> None:
        from bluesky_queueserver_api import BFunc

        api = _api(self.state, status_polling_period=FOLLOW_POLLING)
        try:
            while not self._stopping.is_set():
                t0 = time.monotonic()
                error = None
                report = None
                try:
                    reply = api.function_execute(BFunc(STATUS_FUNCTION), run_in_background=True)
                    if not reply.get("success"):
                        raise RuntimeError(reply.get("msg"))
                    uid = reply["task_uid"]
                    api.wait_for_completed_task(uid, timeout=WORKER_ANSWER)
                    result = api.task_result(uid)["result"]
                    if not result.get("success"):
                        raise RuntimeError(result.get("msg") or "no message")
                    report = result["return_value"]
                except Exception as exc:  # noqa: BLE001 - shown on the page, retried
                    error = f"the lab's worker gave no status ({type(exc).__name__}: {exc})"
                with self.lock:
                    self.worker_error = error
                    if report is not None:
                        self.worker = report
                if report is not None:
                    self.hub.publish("worker", report)
                if error is not None:
                    self.hub.publish("worker_error", error)
                running = self.manager.get("manager_state") not in (None, "idle")
                every = STATUS_EVERY_RUNNING if running else STATUS_EVERY
                self._stopping.wait(max(0.0, every - (time.monotonic() - t0)))
        finally:
            api.close()


def _manager_view(status: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "manager_state",
        "re_state",
        "items_in_queue",
        "items_in_history",
        "running_item_uid",
        "worker_environment_exists",
        "worker_environment_state",
        "queue_stop_pending",
    )
    return {k: status.get(k) for k in keys}


def _item_view(item: Mapping[str, Any]) -> dict[str, Any]:
    result = item.get("result") or {}
    return {
        "item_uid": item.get("item_uid"),
        "name": item.get("name"),
        "args": item.get("args", []),
        "kwargs": item.get("kwargs", {}),
        "user": item.get("user"),
        "exit_status": result.get("exit_status"),
        "msg": (result.get("msg") or "").strip(),
        "run_uids": result.get("run_uids") or [],
    }
