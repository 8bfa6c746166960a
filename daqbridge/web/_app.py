"""The panel's web application: the page, its live stream and its few actions.

FastAPI (already here for Tiled's server) serves the static page from the package, a
server-sent-event stream of the lab's changes, read-only views (history, a run, its CSV) and the
actions (queue a plan, start, pause, resume, abort, stop), each behind the :class:`Guard`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from daqbridge.errors import DaqbridgeError
from daqbridge.web._forms import Submission, by_id, check_submission, plan_forms
from daqbridge.web._history import History
from daqbridge.web._hub import Hub, sse
from daqbridge.web._lab_link import PANEL_USER, LabLink
from daqbridge.web._security import TOKEN_HEADER, Guard

STATIC = files("daqbridge.web") / "static"
KEEPALIVE = 15.0
"""Seconds between two comments on an idle stream, so proxies and browsers keep it open."""
ACTIONS = ("start", "pause", "resume", "abort", "stop")
ACTION_TIMEOUT = 30.0


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request) -> dict[str, Any] | JSONResponse:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _error(415, "actions are JSON posts (Content-Type: application/json).")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the request body is not JSON.")
    if not isinstance(body, dict):
        return _error(400, "the request body must be a JSON object.")
    return body


def create_app(
    link: LabLink,
    hub: Hub,
    guard: Guard,
    device_ids: list[str],
    history: History,
) -> FastAPI:
    app = FastAPI(title="daqbridge lab panel", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    forms = plan_forms()

    def refused(request: Request) -> JSONResponse | None:
        own = {f"{request.url.scheme}://{request.headers.get('host', '')}"}
        why = guard.refusal(
            request.headers.get(TOKEN_HEADER),
            request.headers.get("origin"),
            own,
            request.headers.get("host", ""),
        )
        return None if why is None else _error(403, why)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-store"})

    @app.get("/api/config")
    def config() -> dict[str, Any]:
        return {
            "read_only": guard.read_only,
            "token_required": guard.token_required,
            "plans": forms,
            "devices": device_ids,
            "lab": link.snapshot()["lab"],
        }

    @app.get("/api/snapshot")
    def snapshot() -> dict[str, Any]:
        return link.snapshot()

    @app.get("/api/frame")
    def frame() -> Response:
        latest = link.camera.latest
        if latest is None:
            return _error(404, "no camera frame yet: the run going on has no camera, or none yet.")
        return JSONResponse(latest, headers={"Cache-Control": "no-store"})

    @app.get("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        queue = hub.open_page()
        first = sse("snapshot", link.snapshot())

        async def events() -> AsyncIterator[str]:
            try:
                yield first
                while not await request.is_disconnected():
                    try:
                        yield await asyncio.wait_for(queue.get(), KEEPALIVE)
                    except TimeoutError:
                        yield ": keepalive\n\n"
            finally:
                hub.close_page(queue)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.post("/api/queue")
    async def queue_plan(request: Request) -> Response:
        if (no := refused(request)) is not None:
            return no
        body = await _body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            sub = _submission(body)
            call = check_submission(sub, device_ids)
        except DaqbridgeError as exc:
            return _error(422, str(exc))
        start = bool(body.get("start", True))
        return await asyncio.to_thread(_queue, link, call, start)

    @app.post("/api/control/{action}")
    async def control(action: str, request: Request) -> Response:
        if (no := refused(request)) is not None:
            return no
        body = await _body(request)  # a JSON post, which another site's page cannot make
        if isinstance(body, JSONResponse):
            return body
        if action not in ACTIONS:
            return _error(404, f"no action {action!r}; actions: {', '.join(ACTIONS)}.")
        return await asyncio.to_thread(_control, link, action)

    @app.get("/api/history")
    async def search(q: str = "", limit: int = 50) -> Response:
        try:
            runs = await asyncio.to_thread(history.search, q, limit)
        except DaqbridgeError as exc:
            return _error(422, str(exc))
        return JSONResponse({"runs": runs})

    @app.get("/api/runs/{uid}")
    async def run(uid: str) -> Response:
        try:
            return JSONResponse(
                json.loads(json.dumps(await asyncio.to_thread(history.run, uid), default=str))
            )
        except DaqbridgeError as exc:
            return _error(404, str(exc))

    @app.get("/api/runs/{uid}/csv")
    async def run_csv(uid: str, stream: str = "primary") -> Response:
        try:
            name, text = await asyncio.to_thread(history.csv, uid, stream)
        except DaqbridgeError as exc:
            return _error(404, str(exc))
        return Response(
            text,
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return app


def _submission(body: dict[str, Any]) -> Submission:
    from daqbridge.errors import PlanArgumentError

    plan = body.get("plan")
    values = body.get("values") or {}
    detectors = body.get("detectors") or []
    md = body.get("md") or []
    ok = (
        isinstance(plan, str)
        and isinstance(values, dict)
        and all(isinstance(k, str) and isinstance(v, str | int | float) for k, v in values.items())
        and isinstance(detectors, list)
        and all(isinstance(d, str) for d in detectors)
        and isinstance(md, list)
        and all(isinstance(m, str) for m in md)
    )
    if not ok:
        raise PlanArgumentError(
            "the form's request is malformed (plan: text, values: texts by field, detectors: "
            "device ids, md: key=value lines).",
            fix="reload the panel's page.",
        )
    return Submission(plan, {k: str(v) for k, v in values.items()}, detectors, md)


def _queue(link: LabLink, call: Any, start: bool) -> Response:
    from bluesky_queueserver_api import BPlan

    kwargs = {key: by_id(value) for key, value in call.kwargs.items()}
    md = {**kwargs.pop("md", {}), "daqbridge_panel": call.describe()}
    item = BPlan(call.spec.name, *[by_id(a) for a in call.args], **kwargs)
    item.meta = md
    api = link.control
    with link.control_lock:
        try:
            reply = api.item_add(item, user=PANEL_USER)
        except api.RequestFailedError as exc:
            return _error(422, f"the lab refused the plan: {exc}")
        except Exception as exc:  # noqa: BLE001 - the manager does not answer
            return _error(503, f"the lab's RE Manager does not answer: {exc}")
        item_uid = reply["item"]["item_uid"]
        link.submitted.add(item_uid)
        started = False
        if start:
            with contextlib.suppress(api.RequestFailedError):  # already running: it waits
                if api.status(reload=True)["manager_state"] == "idle":
                    api.queue_start()
                    started = True
    return JSONResponse(
        {
            "item_uid": item_uid,
            "plan": call.describe(),
            "started": started,
            "qsize": reply.get("qsize"),
        }
    )


def _control(link: LabLink, action: str) -> Response:
    api = link.control
    with link.control_lock:
        try:
            state = api.status(reload=True)["manager_state"]
            if action == "start":
                api.queue_start()
            elif action == "pause":
                api.re_pause(option="deferred")
            elif action == "resume":
                api.re_resume()
            elif action in ("abort", "stop"):
                # The queue server aborts or stops only a paused plan: pause at once first.
                if state == "executing_queue":
                    with contextlib.suppress(api.RequestFailedError):
                        api.queue_stop()  # the queue does not go on to the next plan
                    api.re_pause(option="immediate")
                    api.wait_for_condition(
                        lambda s: s["manager_state"] in ("paused", "idle"), timeout=ACTION_TIMEOUT
                    )
                if api.status(reload=True)["manager_state"] == "paused":
                    if action == "abort":
                        api.re_abort()  # the run is closed as "abort", its data kept
                    else:
                        api.re_stop()  # closed as "success"
        except api.RequestFailedError as exc:
            return _error(409, f"the lab refused to {action}: {exc}")
        except Exception as exc:  # noqa: BLE001 - timeouts, the manager gone
            return _error(503, f"the lab did not {action} ({type(exc).__name__}: {exc})")
    return JSONResponse({"action": action, "was": state})
