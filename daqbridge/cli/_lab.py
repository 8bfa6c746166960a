"""``daqbridge lab up|down|status``: the lab as a long-lived bluesky-queueserver RE Manager.

    daqbridge lab up                 # start once: Redis, the document proxy, the RE Manager
    daqbridge run count sim_meter    # submitted to the lab that is up (submit_to_lab)
    daqbridge lab status
    daqbridge lab down               # ordered: runtime, worker, manager, proxy, Redis

What runs where (everything on 127.0.0.1, on free ports, in its own session so a Ctrl-C in the
terminal that started it reaches none of them):

* ``redis-server`` (unless ``--redis`` names one): the queue server keeps its queue and history
  there. Ours keeps nothing on disk, so a lab brought down forgets its queue.
* the document proxy (``python -m daqbridge.cli._lab documents``): the worker's RunEngine pushes
  every document to it, clients subscribe to it for live tables. See "Documents" below.
* ``start-re-manager``: the RE Manager; its worker process runs daqbridge/cli/lab_startup/, which
  starts the lab with the same session code as the IPython profile (``build_session``) and
  offers the plans of ``daqbridge run`` with its checks (:func:`checked_plan`).
* the catalog server (``python -m daqbridge catalog serve``): the lab's catalog behind a Tiled
  server with a random API key, so ``daqbridge catalog list`` reads it with Tiled's HTTP client
  (a third of a second to import) instead of importing Tiled's whole server to open the files
  itself (two to three seconds). Not started when the profile's catalog is already a Tiled
  server.

The addresses, pids (with their start times, so a recycled pid is never taken for ours), the
profile and its hash go to ``<data_dir>/lab.json``, written atomically; logs to
``<data_dir>/logs/``. A lab.json whose processes are gone is stale: any command that finds one says
so, stops what is left of that lab, and removes the file.

Documents: the worker's RunEngine sends each document as ``b"daqbridge <name> <JSON>"`` on a 0MQ
PUSH socket (never blocking the RunEngine: a full queue drops and counts). The proxy republishes
them on an XPUB socket. A 0MQ subscriber misses whatever is published before its subscription
reaches the publisher ("slow joiner"), so a client that subscribes just before queueing a plan
could lose the start document and print no table. The proxy therefore answers every
subscription to a ``daqbridge-hello-<id>`` topic with one message on that topic: a client that
has received its hello is subscribed, and everything published afterwards reaches it. bluesky's
``RemoteDispatcher(address, prefix=b"daqbridge", deserializer=json.loads)`` can read the same
stream (it ignores the hellos, whose prefix differs). JSON and not pickle: anything on this
machine can connect to a loopback port, and unpickling what it sends would run its code.

Exit status of ``lab status``: 0 up, 3 not up (LSB's "not running").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib.resources
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from daqbridge.errors import DaqbridgeError

if TYPE_CHECKING:
    from daqbridge.cli._plan_args import PlanSpec
    from daqbridge.config import Profile

LAB_FILE = "lab.json"
LAB_FORMAT = 1
LOCALHOST = "127.0.0.1"

PROFILE_ENV = "DAQBRIDGE_PROFILE"
DATA_ENV = "DAQBRIDGE_DATA"
DOCUMENTS_ENV = "DAQBRIDGE_LAB_DOCUMENTS"
"""Address the worker's RunEngine pushes its documents to (set by ``lab up``)."""
CATALOG_KEY_ENV = "TILED_SINGLE_USER_API_KEY"
"""Tiled's variable for the key its single-user server demands (``daqbridge catalog serve``)."""

DOCUMENT_PREFIX = b"daqbridge"
HELLO_PREFIX = b"daqbridge-hello-"
CLOSE_FUNCTION = "lab_close_runtime"
"""Worker function that runs the runtime's ordered shutdown and returns its report."""

STARTUP_DIR = Path(__file__).with_name("lab_startup")
PERMISSIONS_FILE = STARTUP_DIR / "user_group_permissions.yaml"
STARTUP_FAILED = "daqbridge lab: the lab did not start:"
"""What the worker prints when the runtime does not start; ``lab up`` looks for it in the log."""

EXIT_NOT_UP = 3
EXIT_FAILED = 1
EXIT_USAGE = 2

# Deadlines, seconds. Generous: the machine a lab runs on may be busy with the lab itself.
REDIS_START = 30.0
PROXY_START = 30.0
MANAGER_START = 60.0
CATALOG_START = 120.0
ENVIRONMENT_OPEN = 300.0
RUNTIME_CLOSE_MARGIN = 30.0
ENVIRONMENT_CLOSE = 60.0
MANAGER_STOP = 30.0
PROCESS_STOP = 10.0
ABORT = 60.0
STREAM_READY = 15.0
STREAM_DRAIN = 15.0
REQUEST = 10.0
"""Seconds one request to the RE Manager may take to be answered (a busy machine is slow)."""


class LabError(DaqbridgeError):
    """The lab server could not be started, reached or stopped."""


# --- the lab file -------------------------------------------------------------------------------


@dataclasses.dataclass
class LabProcess:
    """One process of the lab: its pid and start time (clock ticks since boot, from /proc), so a
    pid the system gave to another process since is not mistaken for ours."""

    pid: int
    start_time: int | None
    log: str

    def alive(self) -> bool:
        return _same_process(self.pid, self.start_time)


@dataclasses.dataclass
class LabState:
    """What ``<data_dir>/lab.json`` holds."""

    data_dir: str
    profile: str | None
    """The profile file (None: the embedded simulated lab)."""
    profile_label: str
    profile_sha256: str | None
    state: str  # "starting" while lab up runs, then "up"
    started: float
    redis_addr: str
    control_addr: str
    info_addr: str
    documents_in: str
    documents_out: str
    redis: LabProcess | None = None
    documents: LabProcess | None = None
    manager: LabProcess | None = None
    owner_pid: int = 0
    catalog_addr: str = ""
    """The catalog server's URL ("" when the lab's catalog is a Tiled server of its own)."""
    catalog_dir: str = ""
    catalog_api_key: str = ""
    catalog: LabProcess | None = None
    format: int = LAB_FORMAT

    @property
    def path(self) -> Path:
        return Path(self.data_dir) / LAB_FILE

    def processes(self) -> dict[str, LabProcess]:
        return {
            name: proc
            for name, proc in (
                ("manager", self.manager),
                ("catalog", self.catalog),
                ("documents", self.documents),
                ("redis", self.redis),
            )
            if proc is not None
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LabState:
        raw = json.loads(text)
        if raw.get("format") != LAB_FORMAT:
            raise ValueError(f"unknown lab.json format {raw.get('format')!r}")
        for key in ("redis", "documents", "manager", "catalog"):
            if raw.get(key) is not None:
                raw[key] = LabProcess(**raw[key])
        return cls(**raw)

    def write(self) -> None:
        """Atomically: a reader sees the old file or the new one, never half of one."""
        path = self.path
        tmp = path.with_name(f".{LAB_FILE}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def lab_dir(data_dir: Path) -> Path:
    """Runtime files of the lab server that are not logs (lock, Redis dir, plan lists)."""
    return data_dir / "lab"


def logs_dir(data_dir: Path) -> Path:
    return data_dir / "logs"


def read_lab_file(data_dir: Path) -> LabState | None:
    """The lab recorded in ``data_dir`` (None: none). A file that cannot be read is reported
    as stale by the caller, so it is returned as a bare state pointing at nothing."""
    path = data_dir / LAB_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LabError(
            f"cannot read {path}: {exc.strerror}.",
            resource=str(path),
            fix="check the permissions of the data directory.",
        ) from None
    try:
        return LabState.from_json(text)
    except (ValueError, TypeError, KeyError):
        return LabState(
            data_dir=str(data_dir),
            profile=None,
            profile_label="(unreadable lab.json)",
            profile_sha256=None,
            state="unreadable",
            started=0.0,
            redis_addr="",
            control_addr="",
            info_addr="",
            documents_in="",
            documents_out="",
        )


def is_up(state: LabState) -> bool:
    """Up: lab up finished and the manager and the document proxy still run (Redis too, when
    it is ours). Not the catalog server: plans run without it and ``catalog list`` then reads
    the files, so its loss must not make the next command clean the lab away as stale."""
    if state.state != "up":
        return False
    return all(p.alive() for name, p in state.processes().items() if name != "catalog")


@contextlib.contextmanager
def lab_lock(data_dir: Path) -> Iterator[None]:
    """One ``lab up``/``lab down``/clean-up at a time per data directory (an OS lock: it is
    released when the holder dies, so a killed ``lab up`` never blocks the next one)."""
    import fcntl

    directory = lab_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lab.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LabError(
                f"another `daqbridge lab` command (pid {holder}) is starting or stopping the "
                "lab of this data directory.",
                resource=str(data_dir),
                fix="wait for it to finish, then try again.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


# --- processes ----------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone or a zombie (an
    exited child nobody reaped yet is not running anything)."""
    if not Path("/proc/self/stat").exists():  # not Linux: no start times, pids only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _record(proc: subprocess.Popen, log: Path) -> LabProcess:
    start = process_start_time(proc.pid)
    return LabProcess(pid=proc.pid, start_time=start or None, log=str(log))


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the RE Manager's watchdog starts the manager, which starts
    the worker: stopping only the first would orphan the worker with the lab's ports open)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_gone(pids: Sequence[tuple[int, int | None]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_same_process(pid, start) for pid, start in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _same_process(pid: int, start_time: int | None) -> bool:
    """``pid`` still runs and is the process recorded (not a later one given the same pid)."""
    now = process_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def stop_process(proc: LabProcess, timeout: float = PROCESS_STOP) -> str:
    """SIGTERM the process (and what it started), SIGKILL what is left after ``timeout``.
    Returns what was done, in words."""
    if not proc.alive():
        return "was not running"
    tree = [(proc.pid, proc.start_time)] + [
        (pid, process_start_time(pid)) for pid in _descendants(proc.pid)
    ]
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    if _wait_gone(tree, timeout):
        return "stopped"
    for pid, start in tree:
        if _same_process(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _wait_gone(tree, 5.0)
    return f"did not stop within {timeout:.0f} s of SIGTERM: killed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((LOCALHOST, port)) == 0


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _open_log(path: Path) -> IO[bytes]:
    """A fresh log per ``lab up``; the previous one is kept as ``.1`` for the post-mortem."""
    if path.exists():
        os.replace(path, path.with_name(path.name + ".1"))
    return open(path, "ab")


def _spawn(argv: list[str], log: Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen:
    with _open_log(log) as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # Ctrl-C in the starting terminal must not reach the lab
        )


# --- which lab ----------------------------------------------------------------------------------


def _requested_profile(profile: str | os.PathLike[str] | Profile | None) -> str | None:
    """The profile file asked for, absolute (None: the embedded simulated lab)."""
    if profile is not None and not isinstance(profile, str | os.PathLike):
        source = profile.source
        return None if source is None or _is_embedded(source) else str(source)
    from daqbridge.cli._session import resolve_profile

    resolved = resolve_profile(profile)
    if resolved is None:
        return None
    path = Path(resolved).expanduser().resolve()
    return None if _is_embedded(path) else str(path)


def _is_embedded(path: str | Path) -> bool:
    # Profile.default_path(), without importing the profile models (half a second).
    embedded = Path(str(importlib.resources.files("daqbridge").joinpath("profiles", "sim.toml")))
    return Path(path).resolve() == embedded.resolve()


def _data_dir(profile: str | os.PathLike[str] | Profile | None) -> Path:
    """Where the lab of ``profile`` keeps lab.json: the runtime's data directory, by the one
    rule every command uses (``locate_data``; with $DAQBRIDGE_DATA set no profile is read,
    which saves ``daqbridge run`` half a second on its way to the lab)."""
    from daqbridge.config import locate_data

    return locate_data(profile).directory


def _load(profile: str | os.PathLike[str] | Profile | None) -> Profile:
    from daqbridge.config import PathExists, Profile, load_profile

    if isinstance(profile, Profile):
        return profile
    from daqbridge.cli._session import resolve_profile

    return load_profile(resolve_profile(profile), device_cache=PathExists())


def _sha256(path: str | Path | None) -> str | None:
    if path is None:
        from daqbridge.config import Profile

        path = Profile.default_path()
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _say(text: str, stream: IO[str] | None = None) -> None:
    print(f"daqbridge lab: {text}", file=stream or sys.stderr, flush=True)


def clean_stale(state: LabState, say: Callable[[str], None] = _say) -> None:
    """Stop what is left of a lab that is not up any more and remove its lab.json."""
    gone = [name for name, p in state.processes().items() if not p.alive()]
    if state.state == "unreadable":
        why = "not readable"
    elif gone:
        why = f"{', '.join(gone)} no longer running"
    else:
        why = "left by a `lab up` that did not finish"
    done = []
    for name, proc in state.processes().items():
        if proc.alive():
            done.append(f"{name} (pid {proc.pid}) {stop_process(proc)}")
    with contextlib.suppress(FileNotFoundError):
        state.path.unlink()
    leftovers = f"; {'; '.join(done)}" if done else ""
    say(f"cleaned a stale {state.path} ({why}){leftovers}.")


def find_lab(
    profile: str | os.PathLike[str] | Profile | None = None,
    *,
    say: Callable[[str], None] = _say,
) -> LabState | None:
    """The lab that is up for ``profile`` (default: $DAQBRIDGE_PROFILE, else the embedded
    simulated lab), or None. A stale lab.json is cleaned on the way (with a message).

    Raises LabError when a lab is up in the same data directory with another profile: running
    the other profile cold next to it would fight it for the ports and the catalog.
    """
    data_dir = _data_dir(profile)
    state = read_lab_file(data_dir)
    if state is None:
        return None
    if not is_up(state):
        try:
            with lab_lock(data_dir):
                clean_stale(state, say)
        except LabError:
            pass  # a lab up (still starting) or a lab down holds the lock: not up, not stale
        return None
    wanted = _requested_profile(profile)
    if wanted != state.profile:
        raise LabError(
            f"the lab that is up in {data_dir} runs profile {state.profile_label}, not "
            f"{wanted or 'the embedded simulated lab'}.",
            resource=state.control_addr,
            fix="leave out --profile to use the lab that is up, or `daqbridge lab down` first "
            "and `daqbridge lab up --profile ...` with the other one.",
        )
    return state


# --- lab up -------------------------------------------------------------------------------------


def _manager_executable() -> str:
    local = Path(sys.executable).with_name("start-re-manager")
    found = str(local) if local.exists() else shutil.which("start-re-manager")
    if found is None:
        raise LabError(
            "start-re-manager (bluesky-queueserver) is not installed.",
            resource="start-re-manager",
            fix="pip install 'daqbridge[queue]' in the environment daqbridge runs from.",
        )
    return found


def _redis_executable() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise LabError(
            "redis-server is not installed: the lab's queue server keeps its queue in Redis.",
            resource="redis-server",
            fix="install it (Debian/Ubuntu: `sudo apt-get install redis-server`; Fedora: `sudo "
            "dnf install redis`; conda: `conda install -c conda-forge redis-server`; macOS: "
            "`brew install redis`), or give a running one with `daqbridge lab up --redis "
            "HOST:PORT`.",
        )
    return found


def _redis_answers(port: int, host: str = LOCALHOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait_started(
    what: str,
    ready: Callable[[], bool],
    proc: subprocess.Popen,
    log: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise LabError(
                f"{what} exited with status {proc.returncode} while starting; the end of its "
                f"log {log}:\n{_tail(log)}",
                resource=what,
                fix=f"read {log}; a port taken by another program is the usual cause (run "
                "`daqbridge lab up` again: it picks new ports).",
            )
        if time.monotonic() > deadline:
            raise LabError(
                f"{what} did not get ready within {timeout:.0f} s; the end of its log {log}:\n"
                f"{_tail(log)}",
                resource=what,
                fix=f"read {log}; on a very busy machine try `daqbridge lab up --timeout` "
                "with more seconds.",
            )
        time.sleep(0.05)


def _api(state: LabState, **options: Any) -> Any:
    from bluesky_queueserver_api.zmq import REManagerAPI

    return REManagerAPI(
        zmq_control_addr=state.control_addr,
        zmq_info_addr=state.info_addr,
        # bluesky-queueserver-api polls every 1 s by default: a count of one point would wait
        # most of that second after it ended.
        status_polling_period=options.pop("status_polling_period", 0.05),
        status_expiration_period=options.pop("status_expiration_period", 0.02),
        timeout_recv=options.pop("timeout_recv", REQUEST),
        **options,
    )


def _manager_env(state: LabState) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (PROFILE_ENV,)}
    if state.profile is not None:
        env[PROFILE_ENV] = state.profile
    env[DATA_ENV] = state.data_dir
    env[DOCUMENTS_ENV] = state.documents_in
    env["MPLBACKEND"] = "Agg"  # the worker is headless whatever the terminal had
    env["PYTHONUNBUFFERED"] = "1"  # its log is read while it runs
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return env


def _wait_environment(state: LabState, api: Any, timeout: float, say: Callable[[str], None]):
    """Until the worker's runtime is up; progress every few seconds; LabError naming the log
    (and the lab's own error line, when the runtime said why) if it does not open."""
    t0 = time.monotonic()
    next_note = t0 + 5.0
    log = state.manager.log if state.manager else "?"
    while True:
        status = api.status(reload=True)
        if status["worker_environment_exists"] and status["manager_state"] == "idle":
            return
        if not status["worker_environment_exists"] and status["manager_state"] == "idle":
            reason = _startup_failure(log)
            # The lab's own error names the instrument, its port and the fix: that, not the
            # worker's traceback, is what the scientist needs (the log keeps the traceback).
            if reason:
                raise LabError(
                    f"the worker did not start the lab (the RE Manager's log {log} has the "
                    f"details): {reason}",
                    resource=state.control_addr,
                )
            raise LabError(
                f"the worker did not start the lab. The end of the RE Manager's log {log}:\n"
                f"{_tail(log, 25)}",
                resource=state.control_addr,
                fix="correct what the log names (`daqbridge config check` checks the profile; "
                "`daqbridge status` starts the same lab without the queue server and says "
                "which instrument fails), then `daqbridge lab up` again.",
            )
        if state.manager is not None and not state.manager.alive():
            raise LabError(
                f"the RE Manager exited while its worker was starting the lab; the end of its "
                f"log {log}:\n{_tail(log, 25)}",
                resource=state.control_addr,
                fix=f"read {log}.",
            )
        now = time.monotonic()
        if now - t0 > timeout:
            raise LabError(
                f"the worker did not start the lab within {timeout:.0f} s (it is "
                f"{status['worker_environment_state']!r}); the end of the RE Manager's log "
                f"{log}:\n{_tail(log, 25)}",
                resource=state.control_addr,
                fix="read the log: an instrument that does not answer holds start-up until its "
                "connect timeout; on a busy machine give `lab up --timeout` more seconds.",
            )
        if now >= next_note:
            say(
                f"waiting for the worker to start the lab ({now - t0:.0f} s, "
                f"{status['worker_environment_state']}; log: {log})"
            )
            next_note = now + 5.0
        time.sleep(0.1)


def _startup_failure(log: str | Path) -> str:
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if STARTUP_FAILED in line:
            return line.split(STARTUP_FAILED, 1)[1].strip()
    return ""


def lab_up(
    profile: str | os.PathLike[str] | None = None,
    *,
    redis: str | None = None,
    timeout: float = ENVIRONMENT_OPEN,
    say: Callable[[str], None] = _say,
) -> tuple[LabState, bool]:
    """Start the lab; return its state once the worker's runtime is up, and whether this call
    started it (False: it was already up).

    Raises LabError (what did not start, its log) after stopping what it had started, or when
    a lab with another profile is up in the same data directory.
    """
    loaded = _load(profile)  # every profile error now, before any process starts
    data_dir = _data_dir(loaded)
    data_dir.mkdir(parents=True, exist_ok=True)
    with lab_lock(data_dir):
        existing = read_lab_file(data_dir)
        if existing is not None:
            if is_up(existing):
                wanted = _requested_profile(loaded)
                if wanted != existing.profile:
                    raise LabError(
                        f"a lab with profile {existing.profile_label} is up in {data_dir}; "
                        f"it cannot start {loaded.label} beside it (same data directory).",
                        resource=existing.control_addr,
                        fix="`daqbridge lab down` first, or give the other profile its own "
                        "lab.data_dir.",
                    )
                return existing, False
            clean_stale(existing, say)
        return _start(loaded, data_dir, redis=redis, timeout=timeout, say=say), True


def _start(
    loaded: Profile,
    data_dir: Path,
    *,
    redis: str | None,
    timeout: float,
    say: Callable[[str], None],
) -> LabState:
    manager_exe = _manager_executable()
    redis_exe = None if redis else _redis_executable()
    if redis:
        host, _, port = redis.partition(":")
        if not (port or "6379").isdigit():
            raise LabError(
                f"--redis {redis!r} is not HOST:PORT.", fix="e.g. --redis 127.0.0.1:6379."
            )
        if not _redis_answers(int(port or 6379), host or LOCALHOST):
            raise LabError(
                f"no Redis answers on {redis}.",
                resource=redis,
                fix="start it, correct --redis HOST:PORT, or leave --redis out: `lab up` then "
                "starts its own.",
            )
    logs = logs_dir(data_dir)
    logs.mkdir(parents=True, exist_ok=True)
    work = lab_dir(data_dir)
    work.mkdir(parents=True, exist_ok=True)
    profile_path = None if loaded.source is None or _is_embedded(loaded.source) else loaded.source
    t0 = time.monotonic()
    state = LabState(
        data_dir=str(data_dir),
        profile=str(profile_path) if profile_path else None,
        profile_label=loaded.label,
        profile_sha256=_sha256(profile_path),
        state="starting",
        started=time.time(),
        redis_addr=redis or "",
        control_addr="",
        info_addr="",
        documents_in="",
        documents_out="",
        owner_pid=os.getpid(),
    )
    started: list[subprocess.Popen] = []
    try:
        if redis_exe is not None:
            port = free_port()
            log = logs / "redis.log"
            say(f"starting redis-server on {LOCALHOST}:{port} (log: {log})")
            argv = [
                redis_exe, "--port", str(port), "--bind", LOCALHOST, "--protected-mode", "yes",
                "--save", "", "--appendonly", "no", "--dir", str(work),
            ]  # fmt: skip
            proc = _spawn(argv, log, os.environ, work)
            started.append(proc)
            state.redis_addr = f"{LOCALHOST}:{port}"
            state.redis = _record(proc, log)
            state.write()
            _wait_started("redis-server", lambda: _redis_answers(port), proc, log, REDIS_START)

        in_port, out_port = free_port(), free_port()
        state.documents_in = f"tcp://{LOCALHOST}:{in_port}"
        state.documents_out = f"tcp://{LOCALHOST}:{out_port}"
        log = logs / "documents.log"
        say(f"starting the document proxy on {state.documents_out} (log: {log})")
        argv = [sys.executable, "-m", "daqbridge.cli._lab", "documents"]
        proc = _spawn([*argv, state.documents_in, state.documents_out], log, os.environ, work)
        started.append(proc)
        state.documents = _record(proc, log)
        state.write()
        _wait_started(
            "the document proxy",
            lambda: _listening(in_port) and _listening(out_port),
            proc,
            log,
            PROXY_START,
        )

        control, info = free_port(), free_port()
        state.control_addr = f"tcp://{LOCALHOST}:{control}"
        state.info_addr = f"tcp://{LOCALHOST}:{info}"
        log = logs / "re_manager.log"
        say(f"starting the RE Manager on {state.control_addr} (log: {log})")
        argv = [
            manager_exe,
            "--startup-dir", str(STARTUP_DIR),
            "--existing-plans-devices", str(work / "existing_plans_and_devices.yaml"),
            "--user-group-permissions", str(PERMISSIONS_FILE),
            "--redis-addr", state.redis_addr,
            "--redis-name-prefix", _queue_name(data_dir),
            "--zmq-control-addr", state.control_addr,
            "--zmq-info-addr", state.info_addr,
            "--zmq-publish-console", "ON",
            "--ignore-invalid-plans", "ON",
        ]  # fmt: skip
        proc = _spawn(argv, log, _manager_env(state), work)
        started.append(proc)
        state.manager = _record(proc, log)
        state.write()
        api = _api(state, timeout_recv=1.0)
        try:
            _wait_started("the RE Manager", lambda: _answers(api), proc, log, MANAGER_START)
            say(f"opening the worker environment: the worker starts the lab of {loaded.label}")
            reply = api.environment_open()
            if not reply.get("success", False):
                raise LabError(
                    f"the RE Manager refused to open the worker environment: {reply.get('msg')}",
                    resource=state.control_addr,
                    fix=f"read {log}.",
                )
            _wait_environment(state, api, timeout, say)
        finally:
            api.close()
        catalog = _start_catalog_server(state, loaded, logs, work, say)
        if catalog is not None:
            started.append(catalog)
        state.state = "up"
        state.write()
        say(f"up in {time.monotonic() - t0:.1f} s")
        return state
    except BaseException:
        # Whatever was started goes again, newest first; the error says what did not start.
        for proc in reversed(started):
            if proc.poll() is None:
                stop_process(LabProcess(proc.pid, process_start_time(proc.pid), ""))
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        with contextlib.suppress(FileNotFoundError):
            state.path.unlink()
        raise


def _start_catalog_server(
    state: LabState,
    loaded: Profile,
    logs: Path,
    work: Path,
    say: Callable[[str], None],
) -> subprocess.Popen | None:
    """Serve the catalog the worker writes (started after the worker, which creates it)."""
    from daqbridge.config import locate_data

    if locate_data(loaded).uri is not None:
        return None  # already on a Tiled server: clients go there
    port = free_port()
    key = secrets.token_hex(32)
    log = logs / "catalog.log"
    state.catalog_dir = state.data_dir  # the worker's catalog: $DAQBRIDGE_DATA decides
    state.catalog_addr = f"http://{LOCALHOST}:{port}"
    say(f"starting the catalog server on {state.catalog_addr} (log: {log})")
    env = {**os.environ, DATA_ENV: state.catalog_dir, CATALOG_KEY_ENV: key}
    # Its key in the environment: a command line is readable by every user of the machine.
    argv = [sys.executable, "-m", "daqbridge", "catalog", "serve", "--data", state.catalog_dir]
    argv += ["--port", str(port)]
    proc = _spawn(argv, log, env, work)
    state.catalog = _record(proc, log)
    state.catalog_api_key = key
    state.write()
    # `catalog serve` listens only once the catalog is open, and queues connections until its
    # server has started: listening is ready.
    _wait_started("the catalog server", lambda: _listening(port), proc, log, CATALOG_START)
    return proc


def lab_catalog(data_dir: Path, catalog_dir: Path) -> tuple[str, str] | None:
    """(URL, API key) of the catalog server of the lab up in ``data_dir`` serving
    ``catalog_dir``; None when there is none. Reads lab.json only: never cleans or waits, so a
    reader of the catalog pays a file read and a few /proc reads for asking."""
    try:
        state = read_lab_file(data_dir)
    except LabError:
        return None
    if state is None or state.catalog is None or state.catalog_dir != str(catalog_dir):
        return None
    if not (is_up(state) and state.catalog.alive()):
        return None
    return state.catalog_addr, state.catalog_api_key


def _queue_name(data_dir: Path) -> str:
    """One Redis may serve several labs (``--redis``): the data directory names the queue."""
    return "daqbridge_" + hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]


def _answers(api: Any) -> bool:
    try:
        api.status(reload=True)
    except Exception:  # noqa: BLE001 - not listening yet: CommTimeoutError and friends
        return False
    return True


# --- lab down -----------------------------------------------------------------------------------


def lab_down(
    profile: str | os.PathLike[str] | None = None,
    *,
    data_dir: Path | None = None,
    say: Callable[[str], None] = _say,
) -> tuple[bool, list[str]]:
    """Stop the lab in order: abort a running plan, close the runtime in the worker (its own
    ordered shutdown), close the worker, stop the manager, the document proxy, then Redis,
    each within its deadline. Returns (clean, what was done); (True, []) if no lab was up.
    ``data_dir`` (default: the profile's) names the lab directly."""
    data_dir = data_dir if data_dir is not None else _data_dir(profile)
    with lab_lock(data_dir):
        state = read_lab_file(data_dir)
        if state is None:
            return True, []
        if not is_up(state):
            clean_stale(state, say)
            return True, ["the lab was not up: cleaned its stale lab.json"]
        return _stop(state, say)


def _stop(state: LabState, say: Callable[[str], None]) -> tuple[bool, list[str]]:
    done: list[str] = []
    clean = True
    t0 = time.monotonic()

    def note(text: str) -> None:
        done.append(text)
        say(text)

    from daqbridge.cli._web import stop_panel_process

    stop_panel_process(state.data_dir, note)  # the web panel first: it watches the rest
    api = _api(state)
    try:
        status = api.status(reload=True)
    except Exception as exc:  # noqa: BLE001 - a hung manager: go on to stopping processes
        note(f"the RE Manager does not answer ({type(exc).__name__}); stopping its processes")
        clean = False
        status = None
    if status is None:
        api.close()
    else:
        try:
            clean &= _close_worker(state, api, status, note)
        except Exception as exc:  # noqa: BLE001 - report, then stop the processes anyway
            note(f"closing the worker failed: {exc}")
            clean = False
        try:
            api.send_request(method="manager_stop", params={"option": "safe_off"})
        except Exception as exc:  # noqa: BLE001
            note(f"the RE Manager refused to stop ({exc}); terminating it")
        api.close()
    if state.manager is not None:
        tree = [(state.manager.pid, state.manager.start_time)] + [
            (pid, process_start_time(pid)) for pid in _descendants(state.manager.pid)
        ]
        if _wait_gone(tree, MANAGER_STOP):
            note(f"RE Manager (pid {state.manager.pid}) stopped")
        else:
            outcome = stop_process(state.manager)
            for pid, start in tree[1:]:
                stop_process(LabProcess(pid, start, ""), timeout=2.0)
            note(f"RE Manager (pid {state.manager.pid}) {outcome}")
            clean = False
    if state.catalog is not None:
        outcome = stop_process(state.catalog)
        clean &= outcome == "stopped"
        note(f"catalog server (pid {state.catalog.pid}) {outcome}")
    if state.documents is not None:
        outcome = stop_process(state.documents)
        clean &= outcome == "stopped"
        note(f"document proxy (pid {state.documents.pid}) {outcome}")
    if state.redis is not None:
        outcome = stop_process(state.redis)
        clean &= outcome == "stopped"
        note(f"redis-server (pid {state.redis.pid}) {outcome}")
    with contextlib.suppress(FileNotFoundError):
        state.path.unlink()
    note(f"down in {time.monotonic() - t0:.1f} s{'' if clean else ' (NOT clean: see above)'}")
    return clean, done


def _close_worker(state: LabState, api: Any, status: Mapping[str, Any], note) -> bool:
    """Abort a running plan, run the runtime's ordered shutdown in the worker (it reports), then
    close the worker environment. True when all of it went in order."""
    from bluesky_queueserver_api import BFunc

    clean = True
    if status["manager_state"] in ("executing_queue", "paused"):
        what = "paused" if status["manager_state"] == "paused" else "running"
        note(f"a plan is {what}: aborting it")
        with contextlib.suppress(Exception):
            api.queue_stop()
        if not _abort_running(api):
            clean = False
            note("the plan did not abort; the runtime's shutdown aborts it")
    if not status["worker_environment_exists"]:
        note("the worker environment was already closed")
        return clean
    deadline = _runtime_close_deadline(state)
    reply = api.function_execute(BFunc(CLOSE_FUNCTION), run_in_background=False)
    api.wait_for_completed_task(reply["task_uid"], timeout=deadline)
    result = api.task_result(reply["task_uid"])["result"]
    if result.get("success"):
        report = result.get("return_value") or {}
        clean &= bool(report.get("clean"))
        if report.get("clean"):
            note(f"runtime shut down in order ({report.get('duration', 0.0):.2f} s)")
        else:
            note(f"runtime shutdown NOT clean:\n{report.get('text', '')}")
    else:
        clean = False
        note(f"the runtime's shutdown failed in the worker: {result.get('msg')}")
    api.environment_close()
    try:
        api.wait_for_idle(timeout=ENVIRONMENT_CLOSE)
        note("worker environment closed")
    except api.WaitTimeoutError:
        clean = False
        api.environment_destroy()
        api.wait_for_idle(timeout=ENVIRONMENT_CLOSE)
        note(f"worker environment did not close within {ENVIRONMENT_CLOSE:.0f} s: destroyed")
    return clean


def _runtime_close_deadline(state: LabState) -> float:
    try:
        phases = _load(state.profile).shutdown.phases()
        return sum(deadline for _, deadline in phases) + RUNTIME_CLOSE_MARGIN
    except DaqbridgeError:
        return 60.0 + RUNTIME_CLOSE_MARGIN


def _abort_running(api: Any, timeout: float = ABORT) -> bool:
    """Pause the running plan at once, then abort it (the queue server aborts only a paused
    plan); True when the manager is idle afterwards."""
    status = api.status(reload=True)
    if status["manager_state"] == "executing_queue":
        with contextlib.suppress(Exception):  # it may have just ended
            api.re_pause(option="immediate")
        try:
            api.wait_for_condition(
                lambda s: s["manager_state"] in ("paused", "idle"), timeout=timeout
            )
        except api.WaitTimeoutError:
            return False
    if api.status(reload=True)["manager_state"] == "paused":
        api.re_abort()
    try:
        api.wait_for_idle(timeout=timeout)
    except api.WaitTimeoutError:
        return False
    return True


# --- lab status ---------------------------------------------------------------------------------


def _pid(proc: LabProcess | None) -> str:
    return f" (pid {proc.pid})" if proc is not None else ""


def describe(state: LabState, live: Mapping[str, Any] | None) -> str:
    lines = [
        f"up since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state.started))}: "
        f"{state.profile_label}",
        f"  data:       {state.data_dir}",
        f"  manager:    {state.control_addr}{_pid(state.manager)}",
        f"  documents:  {state.documents_out}{_pid(state.documents)}",
        f"  catalog:    {state.catalog_addr or 'on the Tiled server of the profile'}"
        f"{_pid(state.catalog)}",
        f"  redis:      {state.redis_addr}{_pid(state.redis) or ' (not ours)'}",
        f"  logs:       {logs_dir(Path(state.data_dir))}",
    ]
    if live is not None:
        lines.insert(
            1,
            f"  worker:     environment {live['worker_environment_state']}, manager "
            f"{live['manager_state']}, {live['items_in_queue']} queued, "
            f"{live['items_in_history']} in history",
        )
    if state.profile_sha256 is not None and _sha256(state.profile) != state.profile_sha256:
        lines.append(
            "  the profile changed since `lab up`: the lab runs the old one (`daqbridge lab "
            "down` and `lab up` load the new one)"
        )
    return "\n".join(lines)


# --- the worker ---------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays in readings; anything else as its text."""
    for attr in ("tolist", "item"):
        method = getattr(value, attr, None)
        if callable(method):
            return method()
    return str(value)


class LabPublisher:
    """RunEngine subscriber in the worker: every document to the document proxy.

    Never blocks the RunEngine: a full send queue (the proxy gone) drops the document and counts
    it, and says so once per run."""

    def __init__(self, address: str, *, high_water_mark: int = 10_000) -> None:
        import zmq

        self.address = address
        self.dropped = 0
        self._warned = False
        self._zmq = zmq
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, high_water_mark)
        self._socket.setsockopt(zmq.LINGER, 2000)
        self._socket.connect(address)

    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        payload = json.dumps(doc, default=_jsonable).encode()
        try:
            message = b" ".join((DOCUMENT_PREFIX, name.encode(), payload))
            self._socket.send(message, self._zmq.NOBLOCK)
        except self._zmq.Again:
            self.dropped += 1
            if not self._warned:
                self._warned = True
                print(
                    f"daqbridge lab: the document proxy at {self.address} takes no documents: "
                    "live tables miss this run (the catalog has it)",
                    file=sys.stderr,
                    flush=True,
                )
        if name == "stop":
            self._warned = False

    def close(self) -> None:
        self._socket.close()
        self._context.term()


def checked_plan(spec: PlanSpec) -> Callable[..., Any]:
    """The plan as the queue server calls it, with the checks a cold ``daqbridge run`` makes
    before the RunEngine moves anything: detectors readable, every move inside the axes' limits
    (``bluesky.simulators.check_limits``), the plan's own argument checks (``prime``). A scan past
    a limit then fails before its first point, as it does without the lab. Same name and
    signature (``functools.wraps``), so the queue server validates and lists it as the plan.

    A plain function marked ``_is_plan_`` (how ``bluesky.utils.is_plan`` recognises decorated
    plans), not a generator function: the worker calls it in its own thread before it hands the
    generator to the RunEngine, and ``check_limits`` must run there, since it waits on the
    RunEngine's event loop and refuses to run from inside it."""
    from daqbridge.cli._plan_args import check_before_run, prime

    @functools.wraps(spec.func)
    def plan(*args: Any, **kwargs: Any) -> Any:
        check_before_run(spec, args, kwargs)
        return prime(spec, spec.func(*args, **kwargs))

    plan._is_plan_ = True  # type: ignore[attr-defined]
    return plan


def lab_plans() -> dict[str, Callable[..., Any]]:
    """The plans of the worker's namespace: every plan ``daqbridge run`` offers, checked."""
    from daqbridge.cli._plan_args import plan_registry

    return {name: checked_plan(spec) for name, spec in plan_registry().items()}


QUEUE_USER_GROUP = "primary"
"""The user group of ``PERMISSIONS_FILE`` that daqbridge's clients submit as (the default group
of bluesky-queueserver-api's ``item_add``)."""

DEVICE_MAX_DEPTH = 0
"""Depth of the device trees in the allow-lists: start-re-manager's ``--device-max-depth``
default (0, every component), which ``lab up`` keeps."""


@dataclasses.dataclass(frozen=True)
class AllowLists:
    """What the lab's queue server lets :data:`QUEUE_USER_GROUP` call, and the objects its names
    stand for: the arguments of bluesky-queueserver's ``validate_plan`` and ``prepare_plan``."""

    plans: dict[str, Any]
    devices: dict[str, Any]
    plans_in_nspace: dict[str, Any]
    devices_in_nspace: dict[str, Any]


@functools.cache
def _permissions() -> dict[str, Any]:
    from bluesky_queueserver.manager.profile_ops import load_user_group_permissions

    return load_user_group_permissions(str(PERMISSIONS_FILE))


def allow_lists(
    namespace: Mapping[str, Any], *, placeholders: Mapping[str, Any] | None = None
) -> AllowLists:
    """The allow-lists the RE Manager computes from its worker's namespace, computed here the
    same way: bluesky-queueserver's ``existing_plans_and_devices_from_nspace`` (with
    ``--ignore-invalid-plans ON`` and ``DEVICE_MAX_DEPTH``, as ``lab up`` starts the manager),
    filtered by ``PERMISSIONS_FILE`` with ``load_allowed_plans_and_devices``.

    ``placeholders`` are devices known only by their profile id (not started yet): the queue
    server cannot describe them, so each is listed as a device of any kind with no components;
    what they are exactly is known only once the lab has started them.
    """
    from bluesky_queueserver.manager.profile_ops import (
        existing_plans_and_devices_from_nspace,
        load_allowed_plans_and_devices,
    )

    plans, devices, plans_in_nspace, devices_in_nspace = existing_plans_and_devices_from_nspace(
        nspace=dict(namespace), max_depth=DEVICE_MAX_DEPTH, ignore_invalid_plans=True
    )
    for device_id, placeholder in (placeholders or {}).items():
        devices.setdefault(
            device_id,
            {
                "is_readable": True,
                "is_movable": True,
                "is_flyable": False,
                "classname": type(placeholder).__name__,
                "module": type(placeholder).__module__,
            },
        )
        devices_in_nspace.setdefault(device_id, placeholder)
    allowed_plans, allowed_devices = load_allowed_plans_and_devices(
        existing_plans=plans, existing_devices=devices, user_group_permissions=_permissions()
    )
    return AllowLists(
        plans=allowed_plans.get(QUEUE_USER_GROUP, {}),
        devices=allowed_devices.get(QUEUE_USER_GROUP, {}),
        plans_in_nspace=plans_in_nspace,
        devices_in_nspace=devices_in_nspace,
    )


def start_lab_worker() -> dict[str, Any]:
    """The names of the worker's namespace: the session of the profile in $DAQBRIDGE_PROFILE
    (the IPython profile's code), every plan ``daqbridge run`` offers, the document publisher,
    and the function ``lab down`` calls to shut the runtime down in order."""
    from daqbridge.cli._session import build_session, describe_session

    try:
        names = build_session(plots=False, table=False, progress=False)
    except DaqbridgeError as exc:
        print(f"{STARTUP_FAILED} {exc}", file=sys.stderr, flush=True)
        raise
    runtime = names["runtime"]
    RE = names["RE"]  # noqa: N806 - bluesky's name
    for name, plan in lab_plans().items():
        names.setdefault(name, plan)  # a device id keeps its name
    address = os.environ.get(DOCUMENTS_ENV)
    if address:
        RE.subscribe(LabPublisher(address))

    def in_catalog_when_done(name: str, doc: Mapping[str, Any]) -> None:
        # A plan the queue server reports as finished is readable in the catalog, as with a
        # cold `daqbridge run`, which flushes before it prints the uid.
        if runtime.catalog is None:
            return
        try:
            runtime.catalog.flush(timeout=30)
        except Exception as exc:  # noqa: BLE001 - a subscriber that raises fails the plan
            print(f"daqbridge lab: run {doc.get('run_start')}: {exc}", file=sys.stderr)

    RE.subscribe(in_catalog_when_done, "stop")

    def lab_close_runtime() -> dict[str, Any]:
        report = runtime.close(reason="daqbridge lab down")
        return {"clean": report.clean, "text": report.format(), "duration": report.duration}

    lab_close_runtime.__name__ = CLOSE_FUNCTION
    names[CLOSE_FUNCTION] = lab_close_runtime
    print(describe_session(names), flush=True)
    return names


# --- the document proxy ---------------------------------------------------------------------------


def run_document_proxy(in_address: str, out_address: str) -> int:
    """Forward the worker's documents (PULL) to subscribers (XPUB), answering each hello
    subscription (see the module docstring) until SIGTERM or SIGINT."""
    import zmq

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    context = zmq.Context()
    inbox = context.socket(zmq.PULL)
    inbox.bind(in_address)
    outbox = context.socket(zmq.XPUB)
    outbox.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, even a repeated topic
    outbox.setsockopt(zmq.SNDHWM, 100_000)
    outbox.setsockopt(zmq.LINGER, 0)
    outbox.bind(out_address)
    poller = zmq.Poller()
    poller.register(inbox, zmq.POLLIN)
    poller.register(outbox, zmq.POLLIN)
    print(
        f"daqbridge document proxy (pid {os.getpid()}): from the worker on {in_address}, to "
        f"subscribers on {out_address}",
        flush=True,
    )
    forwarded = 0
    try:
        while not stopping.is_set():
            ready = dict(poller.poll(200))
            if inbox in ready:
                with contextlib.suppress(zmq.Again):
                    while True:
                        outbox.send(inbox.recv(zmq.NOBLOCK))
                        forwarded += 1
            if outbox in ready:
                with contextlib.suppress(zmq.Again):
                    while True:
                        event = outbox.recv(zmq.NOBLOCK)
                        if event[:1] == b"\x01" and event[1:].startswith(HELLO_PREFIX):
                            outbox.send(event[1:] + b" hello {}")
    finally:
        inbox.close(0)
        outbox.close(0)
        context.term()
        print(f"daqbridge document proxy: stopped after {forwarded} documents", flush=True)
    return 0


# --- the client ---------------------------------------------------------------------------------


class LabDocuments:
    """The lab's documents as they happen, handed to callbacks on a thread of their own.

    bluesky's RemoteDispatcher minus its slow-joiner gap: :meth:`start` returns once the proxy
    confirmed the subscription (the hello), so a plan queued afterwards is seen from its start
    document on."""

    def __init__(self, address: str, callbacks: Sequence[Callable[[str, dict], Any]]) -> None:
        self.address = address
        self.callbacks = list(callbacks)
        self.stops: dict[str, dict] = {}
        self.errors: list[BaseException] = []
        self._hello = HELLO_PREFIX + uuid.uuid4().hex.encode()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = STREAM_READY) -> bool:
        """Subscribe; True once the proxy confirmed it within ``timeout``."""
        self._thread = threading.Thread(
            target=self._receive, name="daqbridge-lab-documents", daemon=True
        )
        self._thread.start()
        return self._ready.wait(timeout)

    def _receive(self) -> None:
        import zmq

        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, DOCUMENT_PREFIX + b" ")
        sub.setsockopt(zmq.SUBSCRIBE, self._hello)
        sub.connect(self.address)
        try:
            while not self._stopping.is_set():
                if not sub.poll(20):  # how long stop() may wait for this thread
                    continue
                message = sub.recv()
                if message.startswith(self._hello):
                    self._ready.set()
                    continue
                try:
                    _, name, payload = message.split(b" ", 2)
                    doc = json.loads(payload)
                except ValueError as exc:  # not ours (anything local can publish): skip it
                    self.errors.append(exc)
                    continue
                for callback in self.callbacks:
                    try:
                        callback(name.decode(), doc)
                    except Exception as exc:  # noqa: BLE001 - a table bug must not stop the run
                        self.errors.append(exc)
                if name == b"stop":
                    with self._changed:
                        self.stops[doc["run_start"]] = doc
                        self._changed.notify_all()
        finally:
            sub.close(0)
            context.term()

    def wait_for_stops(self, run_uids: Sequence[str], timeout: float = STREAM_DRAIN) -> bool:
        """True once the stop document of every run in ``run_uids`` went through the callbacks."""
        with self._changed:
            return self._changed.wait_for(
                lambda: all(uid in self.stops for uid in run_uids), timeout
            )

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)


class LiveRuns:
    """What ``daqbridge run`` shows of a run on the lab: a line when it starts, bluesky's
    LiveTable of its primary stream's hinted fields, and its end.

    BestEffortCallback would choose the same columns but imports matplotlib (0.7 s of a 1.5 s
    budget for a count on the lab); LiveTable alone does not."""

    def __init__(self, *, table: bool = True, out: IO[str], err: IO[str]) -> None:
        self.table = table
        self.out = out
        self.err = err
        self.started: list[str] = []
        self._starts: dict[str, dict] = {}
        self._tables: dict[str, Any] = {}  # descriptor uid -> LiveTable
        self._runs: dict[str, list[Any]] = {}  # run uid -> its LiveTables

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._starts[doc["uid"]] = doc
            self.started.append(doc["uid"])
            print(
                f"daqbridge run: run {doc['uid']} started on the lab (scan_id "
                f"{doc.get('scan_id')}, {doc.get('plan_name')})",
                file=self.err,
                flush=True,
            )
        elif name == "descriptor":
            start = self._starts.get(doc["run_start"])
            if not self.table or start is None or doc.get("name") != "primary":
                return
            from bluesky.callbacks.core import LiveTable

            table = LiveTable(self._columns(start, doc), out=self._print)
            table("start", start)
            table("descriptor", doc)
            self._tables[doc["uid"]] = table
            self._runs.setdefault(doc["run_start"], []).append(table)
        elif name == "event":
            table = self._tables.get(doc["descriptor"])
            if table is not None:
                table("event", doc)
        elif name == "stop":
            for table in self._runs.pop(doc["run_start"], []):
                table("stop", doc)

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @staticmethod
    def _columns(start: Mapping[str, Any], descriptor: Mapping[str, Any]) -> list[str]:
        keys = descriptor.get("data_keys", {})
        columns: list[str] = []
        for fields, stream in (start.get("hints") or {}).get("dimensions") or []:
            if stream == "primary":
                columns += [f for f in fields if f in keys and f != "time"]
        for hint in (descriptor.get("hints") or {}).values():
            columns += [f for f in hint.get("fields", []) if f in keys]
        if not columns:
            columns = sorted(keys)
        scalar = [c for c in columns if not keys.get(c, {}).get("shape")]
        return list(dict.fromkeys(scalar))


class _Interrupts:
    """SIGINT/SIGTERM raise KeyboardInterrupt only while armed (while waiting for the plan), and
    are remembered otherwise: a Ctrl-C in the middle of a request to the manager would leave the
    request unanswered and the item's fate unknown."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if self.armed:
            raise KeyboardInterrupt
        if not first:
            print("daqbridge run: aborting the plan already; wait", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def armed_section(self) -> Iterator[None]:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.armed = True
        try:
            yield
        finally:
            self.armed = False


def _find_item(items: Sequence[Mapping[str, Any]], item_uid: str) -> Mapping[str, Any] | None:
    for item in reversed(items):
        if item.get("item_uid") == item_uid:
            return item
    return None


def _wait_for_item(
    api: Any, state: LabState, item_uid: str, interrupts: _Interrupts, timeout: float | None
) -> Mapping[str, Any] | None:
    """The history entry of the item once it ran; None if the queue stopped before it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen_history = None
    while True:
        status = api.status(reload=True)
        if status["plan_history_uid"] != seen_history or status["manager_state"] == "idle":
            seen_history = status["plan_history_uid"]
            item = _find_item(api.history_get()["items"], item_uid)
            if item is not None:
                return item
            if status["manager_state"] == "idle":
                return None
        if deadline is not None and time.monotonic() > deadline:
            raise LabError(
                f"the plan did not finish within {timeout:.0f} s.",
                resource=state.control_addr,
                fix="it still runs on the lab: `daqbridge lab status` shows it.",
            )

        def changed(s: Mapping[str, Any], seen: Any = seen_history) -> bool:
            return s["plan_history_uid"] != seen or s["manager_state"] == "idle"

        with interrupts.armed_section():
            with contextlib.suppress(api.WaitTimeoutError):
                api.wait_for_condition(changed, timeout=5.0)


def _start_queue(api: Any, state: LabState, item_uid: str) -> None:
    try:
        api.queue_start()
    except api.RequestFailedError as exc:
        if api.status(reload=True)["manager_state"] != "idle":
            return  # another client started the queue meanwhile: ours runs in turn
        with contextlib.suppress(Exception):
            api.item_remove(uid=item_uid)
        raise LabError(
            f"the lab did not start its queue: {exc}; the plan was taken off the queue.",
            resource=state.control_addr,
            fix="`daqbridge lab status` shows what the lab is doing.",
        ) from None


def _abort_item(api: Any, item_uid: str) -> Mapping[str, Any] | None:
    """Ctrl-C: abort the plan if it runs, take it off the queue if it waits; the lab stays up."""
    status = api.status(reload=True)
    if status["running_item_uid"] == item_uid:
        _abort_running(api)
    else:
        with contextlib.suppress(Exception):
            api.item_remove(uid=item_uid)
    return _find_item(api.history_get()["items"], item_uid)


def _drop_requeued(api: Any, item: Mapping[str, Any]) -> None:
    """The queue server puts a failed or aborted plan back at the front of the queue (to be run
    again by hand); `daqbridge run` ran it once, so it takes it off again."""
    for queued in api.queue_get()["items"]:
        if (
            queued.get("name") == item.get("name")
            and queued.get("args", []) == item.get("args", [])
            and queued.get("kwargs", {}) == item.get("kwargs", {})
        ):
            with contextlib.suppress(Exception):
                api.item_remove(uid=queued["item_uid"])
            return


def submit_to_lab(
    plan_name: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    md: Mapping[str, Any] | None = None,
    *,
    profile: str | os.PathLike[str] | Profile | None = None,
    lab: LabState | None = None,
    table: bool = True,
    timeout: float | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run one plan on the lab that is up and return ``daqbridge run``'s exit status.

    ``args``/``kwargs`` are the plan's, with devices by their ids (the worker resolves them);
    ``md`` goes into the start document of every run of the plan. The run's documents stream
    to a live table while it runs. Ctrl-C (or SIGTERM) aborts the plan, not the lab: the run is
    closed as 'abort' with its data kept, and the exit status is 130 (143). Exit status: 0 done,
    1 the plan failed or the lab stopped answering, 2 the lab refused the plan (unknown plan or
    device, arguments that do not fit), 130/143 interrupted.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr

    def say(text: str) -> None:
        print(f"daqbridge run: {text}", file=err, flush=True)

    state = lab or find_lab(profile, say=lambda text: say(text))
    if state is None:
        raise LabError(
            "no lab is up for this profile.",
            fix="start one with `daqbridge lab up` (or run without a lab: `daqbridge run` "
            "starts the lab for one plan when none is up).",
        )
    from bluesky_queueserver_api import BPlan

    api = _api(state)
    try:
        api.user = f"daqbridge run ({os.environ.get('USER', 'unknown')}, pid {os.getpid()})"
    except Exception:  # noqa: BLE001 - an older API without a settable user
        pass
    live = LiveRuns(table=table, out=out, err=err)
    from daqbridge.runtime._plots import PLOTS_DIR, RunPlots

    # A 1-D scan's peak statistics below the table; the worker saves the PNG itself.
    peaks = RunPlots(
        Path(state.data_dir) / PLOTS_DIR,
        png=False,
        out=lambda text: print(text, file=out, flush=True),
    )
    stream = LabDocuments(state.documents_out, [live, peaks])
    try:
        if not stream.start():
            log = state.documents.log if state.documents else "?"
            say(
                f"the document proxy at {state.documents_out} did not answer: no live table "
                f"(the run still goes to the catalog; log: {log})"
            )
        item = BPlan(plan_name, *args, **dict(kwargs or {}))
        if md:
            item.meta = dict(md)
        with _Interrupts() as interrupts:
            if not api.status(reload=True)["worker_environment_exists"]:
                raise LabError(
                    "the lab's worker environment is closed (someone closed it with qserver?): "
                    "no lab runs there to take the plan.",
                    resource=state.control_addr,
                    fix="`daqbridge lab down`, then `daqbridge lab up`.",
                )
            try:
                reply = api.item_add(item)
            except api.RequestFailedError as exc:
                print(f"daqbridge run: error: the lab refused the plan: {exc}", file=err)
                return EXIT_USAGE
            item_uid = reply["item"]["item_uid"]
            ahead = max(int(reply.get("qsize", 1)) - 1, 0)
            say(
                f"queued on the lab ({state.control_addr})"
                + (f" behind {ahead} other plan(s)" if ahead else "")
            )
            status = api.status(reload=True)
            if status["manager_state"] == "idle":
                _start_queue(api, state, item_uid)
            elif status["manager_state"] == "paused":
                say("the lab has a paused plan: yours runs after it is resumed or aborted")
            try:
                done = _wait_for_item(api, state, item_uid, interrupts, timeout)
            except KeyboardInterrupt:
                signum = interrupts.signum or signal.SIGINT
                say(f"{signal.Signals(signum).name} received: aborting the plan (the lab stays up)")
                done = _abort_item(api, item_uid)
                return _report(api, state, stream, item_uid, done, out, say, interrupted=signum)
            return _report(api, state, stream, item_uid, done, out, say, interrupted=None)
    except (api.RequestFailedError, api.RequestTimeoutError) as exc:
        raise LabError(
            f"the lab did not answer as expected: {exc}",
            resource=state.control_addr,
            fix=f"`daqbridge lab status`; the RE Manager's log is "
            f"{state.manager.log if state.manager else logs_dir(Path(state.data_dir))}.",
        ) from None
    finally:
        stream.stop()
        api.close()


def _report(
    api: Any,
    state: LabState,
    stream: LabDocuments,
    item_uid: str,
    item: Mapping[str, Any] | None,
    out: IO[str],
    say: Callable[[str], None],
    *,
    interrupted: int | None,
) -> int:
    if item is None:
        if interrupted is not None:
            say("the plan had not started: it was taken off the queue; nothing was measured")
            return 128 + interrupted
        with contextlib.suppress(Exception):
            api.item_remove(uid=item_uid)
        say(
            "the queue stopped before the plan ran (a plan ahead of it failed or was stopped); "
            "it was taken off the queue"
        )
        return EXIT_FAILED
    result = item.get("result", {})
    exit_status = result.get("exit_status")
    uids = list(result.get("run_uids") or [])
    if exit_status in ("failed", "aborted", "halted"):
        _drop_requeued(api, item)
    if uids and not stream.wait_for_stops(uids):
        say("the live table missed the end of the run (the catalog has it)")
    data = shlex.quote(state.data_dir)
    for uid in uids:
        print(f"uid: {uid}", file=out)
        print("read it back:", file=out)
        print(f"  daqbridge catalog show {uid} --data {data}", file=out, flush=True)
    if exit_status in ("completed", "stopped"):
        return 0
    if interrupted is not None:
        runs = "the run was aborted; its data is kept, marked 'abort'" if uids else "nothing ran"
        say(f"interrupted: {runs}. The lab is still up.")
        return 128 + interrupted
    message = (result.get("msg") or "").strip()
    if not uids and "PlanArgumentError" in (result.get("traceback") or ""):
        # checked_plan's refusal, before anything moved: what a cold run calls a usage error
        say(f"error: {message.removeprefix('Plan failed: ')}")
        return EXIT_USAGE
    say(f"error: the plan ended {exit_status!r} on the lab: {message or 'no message'}")
    if uids:
        say("what was measured before is kept in the catalog.")
    return EXIT_FAILED


# --- the command --------------------------------------------------------------------------------


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="lab profile (default: $DAQBRIDGE_PROFILE, else the embedded simulated lab)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lab",
        help="start, stop or check the lab server (a bluesky queue server running the lab)",
        description="The lab as a server that stays up: a bluesky-queueserver RE Manager whose "
        "worker runs the lab of the profile, with its own Redis and a live document stream, all "
        "on 127.0.0.1. While it is up, `daqbridge run` submits its plan to it. State in "
        "<data_dir>/lab.json, logs in <data_dir>/logs/. See docs/lab_server.md.",
    )
    sub = p.add_subparsers(dest="lab_command", metavar="ACTION")
    up = sub.add_parser("up", help="start the lab server (returns once the lab is up)")
    _add_profile(up)
    mode = up.add_mutually_exclusive_group()
    mode.add_argument(
        "--detach",
        dest="foreground",
        action="store_false",
        help="return once the lab is up; it keeps running (default)",
    )
    mode.add_argument(
        "--foreground",
        dest="foreground",
        action="store_true",
        help="stay until Ctrl-C or SIGTERM, then bring the lab down in order",
    )
    up.add_argument(
        "--redis",
        metavar="HOST:PORT",
        help="use this running Redis instead of starting one",
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=ENVIRONMENT_OPEN,
        metavar="SECONDS",
        help=f"how long the worker may take to start the lab (default {ENVIRONMENT_OPEN:.0f})",
    )
    up.add_argument(
        "--web",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the web panel too (`daqbridge web`, its address printed; default: yes)",
    )
    up.set_defaults(func=_up_command, foreground=False)
    down = sub.add_parser("down", help="stop the lab server in order")
    _add_profile(down)
    down.set_defaults(func=_down_command)
    status = sub.add_parser("status", help="is the lab server up; what does it run")
    _add_profile(status)
    status.set_defaults(func=_status_command)
    p.set_defaults(func=lambda args: (p.print_help(), EXIT_USAGE)[1])


def _up_command(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise LabError(f"--timeout must be > 0 seconds, got {args.timeout}.", fix="e.g. 300.")
    state, started = lab_up(args.profile, redis=args.redis, timeout=args.timeout)
    # The web panel (daqbridge/cli/_web.py) of a lab this call started: `lab up` on a lab that
    # is up changes nothing (docs/lab_server.md). The lab works without it.
    if args.web and started:
        from daqbridge.cli._web import start_panel_process

        start_panel_process(state, _say)
    if not started:
        _say(f"already up:\n{describe(state, _live_status(state))}")
        _say("`daqbridge lab down` stops it.")
        if not args.foreground:
            return 0
    else:
        _say(describe(state, None))
        _say("`daqbridge run PLAN ...` now runs on it; `daqbridge lab down` stops it.")
    if not args.foreground:
        return 0
    return _stay_in_foreground(state)


def _stay_in_foreground(state: LabState) -> int:
    stop = threading.Event()
    saved = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    _say("in the foreground: Ctrl-C brings the lab down")
    try:
        while not stop.wait(1.0):
            if not is_up(state):
                gone = [n for n, p in state.processes().items() if not p.alive()]
                _say(f"{', '.join(gone)} stopped on its own: bringing the rest down")
                break
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    clean, _ = lab_down(data_dir=Path(state.data_dir))
    return 0 if clean else EXIT_FAILED


def _down_command(args: argparse.Namespace) -> int:
    clean, done = lab_down(args.profile)
    if not done:
        _say("no lab is up for this profile: nothing to stop.")
    return 0 if clean else EXIT_FAILED


def _live_status(state: LabState) -> Mapping[str, Any] | None:
    try:
        api = _api(state)
    except Exception:  # noqa: BLE001 - bluesky-queueserver-api missing: no live part
        return None
    try:
        return api.status(reload=True)
    except Exception:  # noqa: BLE001
        return None
    finally:
        api.close()


def _status_command(args: argparse.Namespace) -> int:
    state = find_lab(args.profile)
    if state is None:
        _say(f"not up (data directory {_data_dir(args.profile)}); `daqbridge lab up` starts it.")
        return EXIT_NOT_UP
    live = _live_status(state)
    print(describe(state, live))
    if live is None:
        _say(
            f"the RE Manager does not answer on {state.control_addr}: see "
            f"{state.manager.log if state.manager else 'its log'}"
        )
        return EXIT_FAILED
    return 0


def _main(argv: Sequence[str]) -> int:
    """``python -m daqbridge.cli._lab documents IN OUT``: the document proxy process."""
    if len(argv) == 3 and argv[0] == "documents":
        return run_document_proxy(argv[1], argv[2])
    print("usage: python -m daqbridge.cli._lab documents IN_ADDRESS OUT_ADDRESS", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
