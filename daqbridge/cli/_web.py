"""``daqbridge web``: the lab's control panel in a browser, on the lab that ``daqbridge lab up``
started.

    daqbridge web                      # http://127.0.0.1:8765/ for the lab of the profile
    daqbridge web --read-only          # views only
    daqbridge web --host 0.0.0.0       # other machines too: every action then needs the token

The panel holds no lab of its own: the queue, the worker's status and the documents come from
the lab server (daqbridge/web/_lab_link.py), the history from the catalog. See docs/web.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daqbridge.errors import DaqbridgeError

if TYPE_CHECKING:
    from daqbridge.cli._lab import LabState

DEFAULT_PORT = 8765
EXIT_NO_LAB = 2


class PanelError(DaqbridgeError):
    """The panel could not start (no lab up, the port taken)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "web",
        help="serve the lab's control panel in a browser (needs `daqbridge lab up`)",
        description="The control panel of the lab that is up (`daqbridge lab up`): instruments "
        "of both stacks, the lease table, run control, live plots, the catalog's runs. Bound to "
        "127.0.0.1 unless --host says otherwise; on any other address every action needs the "
        "token. See docs/web.md.",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="lab profile (default: $DAQBRIDGE_PROFILE, else the embedded simulated lab)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on (default {DEFAULT_PORT}; 0: a free one, printed)",
    )
    p.add_argument("--read-only", action="store_true", help="show the lab; allow no action")
    p.add_argument(
        "--token",
        help="the token every action must carry (default: none on 127.0.0.1, a random one, "
        "printed, on any other address)",
    )
    p.set_defaults(func=web_command)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PanelError(
            f"cannot listen on {host}:{port}: {exc.strerror}.",
            resource=f"{host}:{port}",
            fix="another program (another `daqbridge web`?) uses the port: pick another with "
            "--port N (0 picks a free one), or check --host.",
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def web_command(args: argparse.Namespace) -> int:
    from daqbridge.cli._lab import _data_dir, _load, find_lab

    if not 0 <= args.port <= 65535:
        raise PanelError(f"--port {args.port} is not a port number.", fix="e.g. --port 8765.")
    state = find_lab(args.profile)
    if state is None:
        print(
            "daqbridge web: error: no lab is up for this profile (data directory "
            f"{_data_dir(args.profile)}). Fix: start it with `daqbridge lab up`"
            + (f" --profile {args.profile}" if args.profile else "")
            + " (or `daqbridge lab up --web`, which starts the panel too).",
            file=sys.stderr,
        )
        return EXIT_NO_LAB
    device_ids = _load(state.profile).device_ids()
    return serve(state, device_ids, args.host, args.port, args.token, args.read_only)


def serve(
    state: LabState,
    device_ids: list[str],
    host: str,
    port: int,
    token: str | None,
    read_only: bool,
) -> int:
    import uvicorn

    from daqbridge.web import Guard, History, Hub, LabLink, create_app

    guard = Guard.for_bind(host, token, read_only)
    sock = _bind(host, port)
    hub = Hub()
    link = LabLink(state, hub)
    history = History(state.data_dir)
    app = create_app(link, hub, guard, device_ids, history)
    threading.Thread(target=history.warm, name="daqbridge-web-catalog", daemon=True).start()
    if not link.start():
        print(
            f"daqbridge web: the lab's document proxy at {state.documents_out} did not answer: "
            "no live plots until it does (log: "
            f"{state.documents.log if state.documents else 'logs/documents.log'})",
            file=sys.stderr,
            flush=True,
        )
    shown = f"[{host}]" if ":" in host else host
    bound = sock.getsockname()[1]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{bound}/"
    mode = " (read-only)" if read_only else ""
    if guard.token is not None:
        print(f"daqbridge web: token {guard.token}  (open {url}#token={guard.token})", flush=True)
    print(f"daqbridge web: the panel of {state.profile_label}{mode} on {url}", flush=True)
    print("daqbridge web: Ctrl-C stops the panel (the lab stays up)", flush=True)
    # Open pages keep their event streams open for ever: a graceful shutdown would wait on them.
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C on once it has shut down: that is the stop
        pass
    finally:
        link.close()
        history.close()
        sock.close()
    print("daqbridge web: stopped (the lab stays up)", flush=True)
    return 0


# --- started by `daqbridge lab up` ---------------------------------------------------------------

PANEL_FILE = "web.json"
"""In the lab's working directory (``<data_dir>/lab/``): the panel ``lab up`` started."""
PANEL_START = 60.0
"""Seconds the panel may take to import its parts and subscribe to the lab (a loaded machine)."""


def start_panel_process(
    state: LabState, say: Callable[[str], None], port: int = DEFAULT_PORT
) -> str | None:
    """Start ``daqbridge web`` for the lab that is up, in its own session like the lab's other
    processes; its URL, or None (said why) when it did not start: the lab works without it."""
    import json
    import time

    from daqbridge.cli._lab import _record, _spawn, free_port, lab_dir, logs_dir, stop_process

    data_dir = Path(state.data_dir)
    record = lab_dir(data_dir) / PANEL_FILE
    running = _recorded_panel(record)
    if running is not None:
        return running["url"]
    log = logs_dir(data_dir) / "web.log"
    if not _port_free(port):
        port = free_port()
    argv = [sys.executable, "-m", "daqbridge", "web", "--port", str(port)]
    if state.profile:
        argv += ["--profile", state.profile]
    env = {**os.environ, "DAQBRIDGE_DATA": state.data_dir}
    proc = _spawn(argv, log, env, lab_dir(data_dir))
    deadline = time.monotonic() + PANEL_START
    while " on http://" not in (text := log.read_text(errors="replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                stop_process(_record(proc, log))
            say(f"the web panel did not start (log: {log}); the lab is up without it")
            return None
        time.sleep(0.1)
    url = text.split(" on http://", 1)[1].split()[0]
    url = f"http://{url}"
    panel = _record(proc, log)
    record.write_text(json.dumps({"url": url, **panel.__dict__}))
    say(f"the web panel is on {url} (log: {log})")
    return url


def stop_panel_process(data_dir: str | os.PathLike[str], note: Callable[[str], None]) -> None:
    """Stop the panel ``lab up`` started, if any (``lab down``)."""
    from daqbridge.cli._lab import LabProcess, lab_dir, stop_process

    record = lab_dir(Path(data_dir)) / PANEL_FILE
    running = _recorded_panel(record)
    if running is not None:
        proc = LabProcess(running["pid"], running["start_time"], running["log"])
        note(f"web panel (pid {proc.pid}) {stop_process(proc)}")
    record.unlink(missing_ok=True)


def _recorded_panel(record: Path) -> dict[str, Any] | None:
    import json

    from daqbridge.cli._lab import LabProcess

    try:
        running = json.loads(record.read_text())
        proc = LabProcess(running["pid"], running["start_time"], running["log"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return running if proc.alive() else None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
