"""Checks of what start-up needs from this machine and the network, made before anything starts.

The profile can be perfect and the lab still fail to start: the Tiled server is down, its API
key is not exported in this shell, the camera's SDK is not installed. Found late, each of these
is blamed on the wrong thing (a catalog phase forced after 15 s, a camera "not powered"), so
they are found first, as profile issues with the key to change, before a simulator, a port or
the catalog is opened. ``daqbridge config check`` runs the same checks (``--offline`` leaves
out the network ones), so it cannot say OK for a profile the runtime then refuses.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from daqbridge.config._models import (
    Profile,
    PvcamInstrument,
    ScpiInstrument,
)
from daqbridge.config._validate import (
    Issue,
    ProfileInvalid,
    sentence,
    writable_dir_problem,
)

CONNECT_TIMEOUT = 2.0
"""Seconds the Tiled server has to accept the connection (a refused one fails at once)."""

REPLY_TIMEOUT = 5.0
"""Seconds a server that accepted the connection has to answer one request."""

_PROBE_DEADLINE = CONNECT_TIMEOUT + 2 * REPLY_TIMEOUT
"""Bound of the whole server check, name resolution included (which no socket timeout bounds)."""

_PIP = f"{sys.executable} -m pip install"
_SDKS: dict[str, tuple[tuple[str, ...], str]] = {
    "pvcam": (
        ("pyvcam", "pyvcam.pvc", "pyvcam.camera"),
        f"install PVCAM from photometrics.com and then `{_PIP} pyvcam`, or set "
        'pvcam.backend = "sim" to use the simulated camera',
    ),
    "@py": (("pyvisa_py",), f"`{_PIP} pyvisa-py`, or choose another visa_backend"),
    "@sim": (("pyvisa_sim",), f"`{_PIP} pyvisa-sim`, or choose another visa_backend"),
}
"""Backend -> (the modules its driver imports, how to get them)."""


def preflight_issues(
    profile: Profile,
    *,
    network: bool = True,
    machine: bool = True,
    instruments: bool = True,
) -> list[Issue]:
    """Every problem start-up would meet outside the profile's text, as issues.

    ``network``: the Tiled server of ``catalog_uri`` answers, is a Tiled server and takes the
    API key. ``machine``: the SQLite catalog's directory is writable and ``instruments``' SDKs
    import (``daqbridge config check --no-port-check`` checks a profile for another machine).
    """
    issues: list[Issue] = []
    add = _Adder(profile, issues)
    uri = profile.lab.catalog_uri
    if uri is not None and uri.startswith(("http://", "https://")):
        if network:
            _check_tiled(add, uri, profile)
    elif uri is not None and uri.startswith("sqlite:///") and machine:
        _check_sqlite_dir(add, uri)
    if machine and instruments:
        _check_sdks(add, profile)
    return _with_lines(issues, profile)


def _with_lines(issues: list[Issue], profile: Profile) -> list[Issue]:
    """The line of each key in the file, as the profile's own issues have it."""
    if not issues or profile.source is None:
        return issues
    from daqbridge.config._load import _with_line

    try:
        text = profile.source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # changed since it was loaded: the key still says where
        return issues
    return [_with_line(issue, text) for issue in issues]


class NotReady(ProfileInvalid):
    """The lab cannot start as configured: what the profile names is not there (the Tiled server,
    its API key, an SDK). Nothing was started; ``issues`` says what, where and the fix."""

    exit_status = 2
    """The CLI's status for it: a mistake in what the command was given, not a failure."""


def ensure_ready(profile: Profile, *, network: bool = True, instruments: bool = True) -> None:
    """Raise NotReady (a ProfileInvalid) on any preflight error."""
    issues = preflight_issues(profile, network=network, instruments=instruments)
    errors = [i for i in issues if i.severity == "error"]
    if errors:
        raise NotReady(errors)


class _Adder:
    def __init__(self, profile: Profile, issues: list[Issue]) -> None:
        self.file = profile.label
        self.issues = issues

    def __call__(
        self,
        rule: str,
        what: str,
        fix: str,
        key: str,
        *,
        instrument: str | None = None,
        resource: str | None = None,
    ) -> None:
        self.issues.append(
            Issue(
                "error",
                rule,
                sentence(what),
                sentence(fix),
                key=key,
                file=self.file,
                instrument=instrument,
                resource=resource,
            )
        )


# --- the catalog --------------------------------------------------------------------------------


def _check_sqlite_dir(add: _Adder, uri: str) -> None:
    directory = Path(os.path.normpath(Path(uri[len("sqlite:///") :]).expanduser().parent))
    problem = writable_dir_problem(directory)
    if problem is not None:
        add(
            "catalog-dir-unwritable",
            f"the SQLite catalog {uri} cannot be written: its directory {directory} {problem}.",
            "point catalog_uri at a catalog.db in a directory this user can write, or remove "
            "catalog_uri to use the embedded catalog in data_dir.",
            "lab.catalog_uri",
            resource=str(directory),
        )


def tiled_api_root(uri: str) -> str:
    """``http://host:port[/prefix]/api/v1/`` of a ``catalog_uri`` (which may name a node)."""
    parts = urlsplit(uri)
    path = parts.path
    cut = path.find("/api/v1")
    prefix = path[:cut] if cut >= 0 else path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, f"{prefix}/api/v1/", "", ""))


def _check_tiled(add: _Adder, uri: str, profile: Profile) -> None:
    key_setting = profile.lab.catalog_api_key
    api_key = profile.lab.resolved_api_key()
    result: list[tuple[str, str, str] | None] = []
    probe = threading.Thread(
        target=lambda: result.append(tiled_server_problem(uri, api_key, key_setting)),
        name="daqbridge-preflight-tiled",
        daemon=True,  # a resolver that hangs must not hold the process at exit
    )
    probe.start()
    probe.join(_PROBE_DEADLINE)
    if not result:
        found: tuple[str, str, str] | None = (
            "catalog-unreachable",
            f"the Tiled server {uri} did not answer within {_PROBE_DEADLINE:g} s (the host "
            "name may not resolve).",
            _UNREACHABLE_FIX,
        )
    else:
        found = result[0]
    if found is None:
        return
    rule, what, fix = found
    key = "lab.catalog_api_key" if rule.startswith("api-key") else "lab.catalog_uri"
    add(rule, what, fix, key, resource=uri)


_UNREACHABLE_FIX = (
    "start the server (on its machine: `tiled serve catalog ...`, or `daqbridge catalog serve`), "
    "check host and port in catalog_uri, or remove catalog_uri to write to the embedded catalog "
    "in data_dir; `daqbridge config check --offline` checks the rest of the profile"
)


def tiled_server_problem(
    uri: str, api_key: str | None, key_setting: str | None = None
) -> tuple[str, str, str] | None:
    """(rule, what, fix) of the first thing that stops a Tiled client on ``uri``, or None.

    One request per question and no retries: a refused connection is an answer, and tiled's
    client would retry it for 45 s.
    """
    import httpx

    about_url = tiled_api_root(uri)
    timeout = httpx.Timeout(REPLY_TIMEOUT, connect=CONNECT_TIMEOUT)
    tls = uri.startswith("https://")
    try:
        # No TLS context for plain http: building one reads the CA bundle (0.8 s, measured).
        with httpx.Client(timeout=timeout, verify=tls, follow_redirects=tls) as http:
            about_reply = http.get(about_url, headers={"Accept": "application/json"})
            if about_reply.is_redirect:
                return (
                    "catalog-not-tiled",
                    f"{uri} redirects to {about_reply.headers.get('location')}.",
                    "write the address it redirects to (https://...) in catalog_uri",
                )
            about = _json(about_reply)
            if (
                about_reply.status_code != 200
                or not isinstance(about, dict)
                or ("api_version" not in about)
            ):
                return (
                    "catalog-not-tiled",
                    f"{uri} answers, but not as a Tiled server: {about_url} gave HTTP "
                    f"{about_reply.status_code} without Tiled's description.",
                    "check the port and path in catalog_uri: it names the Tiled server, e.g. "
                    "http://host:8000",
                )
            required = bool((about.get("authentication") or {}).get("required"))
            if api_key is None:
                if not required:
                    return None
                return ("api-key-missing", *_missing_key(uri, key_setting))
            reply = http.get(
                f"{about_url}metadata/",
                headers={"Authorization": f"Apikey {api_key}", "Accept": "application/json"},
            )
            if reply.status_code in (401, 403):
                detail = _json(reply)
                said = detail.get("detail") if isinstance(detail, dict) else None
                where = f" (read from ${key_setting[4:]})" if _from_env(key_setting) else ""
                return (
                    "api-key-refused",
                    f"the Tiled server {uri} refuses the API key{where}: "
                    f"{said or f'HTTP {reply.status_code}'}.",
                    "use a key the server accepts (its `--api-key`, or one made with "
                    "`tiled api_key create`)",
                )
            return None
    except httpx.ConnectTimeout:
        what = f"the Tiled server {uri} did not accept a connection within {CONNECT_TIMEOUT:g} s."
    except httpx.ConnectError as exc:
        what = f"cannot connect to the Tiled server {uri}: {_reason(exc)}."
    except httpx.HTTPError as exc:
        what = f"the Tiled server {uri} did not answer properly: {type(exc).__name__}: {exc}."
    return ("catalog-unreachable", what, _UNREACHABLE_FIX)


def _missing_key(uri: str, key_setting: str | None) -> tuple[str, str]:
    if _from_env(key_setting):
        name = key_setting[4:]  # type: ignore[index]
        return (
            f"the Tiled server {uri} requires an API key and catalog_api_key reads it from "
            f"${name}, which is not set in this environment.",
            f"export {name}=<the key> in this shell (or the service's environment)",
        )
    return (
        f"the Tiled server {uri} requires an API key and the profile gives none.",
        'write catalog_api_key = "env:TILED_API_KEY" in [lab] and export TILED_API_KEY=<the key>',
    )


def _from_env(key_setting: str | None) -> bool:
    return key_setting is not None and key_setting.startswith("env:")


def _json(reply) -> object:
    try:
        return reply.json()
    except ValueError:
        return None


def _reason(exc: Exception) -> str:
    """The OS's words ("Connection refused"), not httpx's repr of the errno."""
    text = str(exc)
    if "] " in text:
        text = text.split("] ", 1)[1]
    return text or type(exc).__name__


# --- instrument SDKs ----------------------------------------------------------------------------


def _check_sdks(add: _Adder, profile: Profile) -> None:
    native = {inst.id for inst in profile.native_instruments()}
    for i, inst in profile.iter_instruments():
        if inst.id not in native:
            continue
        if isinstance(inst, PvcamInstrument) and inst.pvcam.backend == "pvcam":
            need, key = "pvcam", f"instruments[{i}].pvcam.backend"
        elif isinstance(inst, ScpiInstrument):
            need = "@sim" if (inst.visa_backend or "").endswith("@sim") else inst.visa_backend
            need = need or "@py"
            key = f"instruments[{i}].visa_backend"
        else:
            continue
        if need not in _SDKS:
            continue  # a vendor VISA library (@ivi, @ni) is found by pyvisa when it connects
        modules, fix = _SDKS[need]
        missing = _first_unimportable(modules)
        if missing is not None:
            module, reason = missing
            add(
                "sdk-missing",
                f"{inst.id!r} needs the Python package {module.split('.')[0]!r}, which cannot "
                f"be imported here: {reason}.",
                fix,
                key,
                instrument=inst.id,
                resource=inst.hardware,
            )


def _first_unimportable(modules: tuple[str, ...]) -> tuple[str, str] | None:
    """The first module the driver would fail to import, with why; imported for real, since a
    package that is present can still fail on its shared library (OSError)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except (ImportError, OSError) as exc:
            return name, str(exc) or type(exc).__name__
    return None
