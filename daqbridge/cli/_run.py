"""``daqbridge run PLAN [ARGS ...]``: start the lab, run one plan, say where the data is, stop.

    daqbridge run scan sim_stage_x -5 5 11 --detector sim_meter
    daqbridge run count sim_meter num=3 --md sample=A1
    daqbridge run polarization_scan sim_rotators_a sim_meter 0,45,90
    daqbridge run --list

Why it is built this way:

* Everything that can be wrong with the command is found before the lab starts: the plan name,
  the device ids (checked against the profile), the argument types and the plan's signature.
  Start-up takes seconds; a typo should not. After start-up the arguments are checked again
  against the real devices (soft limits) and the plan runs its own checks
  (:func:`~daqbridge.cli._plan_args.prime`), all before the RunEngine moves anything.
* Nothing typed is evaluated: see :mod:`daqbridge.cli._plan_args` for the rules.
* Ctrl-C (or SIGTERM) aborts the run, the RunEngine stops what it moved and closes the run as
  ``abort`` with its data kept, then the lab shuts down in order; exit status 128 + the signal
  (130 Ctrl-C, 143 SIGTERM), whatever the RunEngine raised on the way out: the user asked to
  stop. The runtime's signal handlers do this (``sigint="abort"``), this module only reports,
  and it says what the stop documents say (a signal that came as the last point was taken
  leaves a run that ended ``success``, and it is reported so).
* When a lab server is up for the profile (``daqbridge lab up``), the plan goes to it
  (:func:`~daqbridge.cli._lab.submit_to_lab`) once the early checks passed: the queue server
  passes an unknown device id through as a string, so a typo that reached it would fail as
  ``'str' object has no attribute 'name'`` instead of "did you mean". Ctrl-C then aborts the
  plan, not the lab. ``--no-lab`` runs in this process whatever is up.
* Exit status: 0 done, 1 the plan or the lab failed, 2 bad command or arguments, 130 Ctrl-C,
  143 SIGTERM. Errors are one message, not a traceback, unless ``--debug``; an instrument's
  failure is reported in the instrument's words (the first daqbridge error of its chain).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import logging
import shlex
import sys
import textwrap
import traceback
from typing import Any

from daqbridge.cli import missing_profile
from daqbridge.cli._plan_args import (
    RULES,
    DeviceRef,
    build_plan_call,
    format_plan_list,
    parse_md,
    resolve_plan,
)
from daqbridge.errors import DaqbridgeError, PlanArgumentError, daqbridge_cause

log = logging.getLogger("daqbridge.cli.run")

EXIT_FAILED = 1
EXIT_USAGE = 2

DESCRIPTION = """\
Start the lab of a profile, run one Bluesky plan, print the run's uid and how to read it back,
then shut the lab down in order. PLAN is a bluesky plan (count, scan, rel_scan, list_scan,
grid_scan, ...) or one of the lab's plans (wavelength_scan, polarization_scan, raster, ...).

Options may come before or after the plan's arguments. Exit status: 0 done, 1 the plan or the
lab failed, 2 bad command or arguments, 130 interrupted (Ctrl-C aborts the run; its data is kept,
marked 'abort'), 143 terminated (SIGTERM, the same abort)."""

_RULES_TEXT = textwrap.fill(RULES + ".", width=96, initial_indent="  * ", subsequent_indent="    ")

MAPPING = f"""\
How the words become a call:
  * bluesky plans take their detectors first; they come from --detector (repeatable):
      scan MOTOR START STOP [MOTOR START STOP ...] NUM --detector D
          -> bluesky.plans.scan([D], MOTOR, START, STOP, ..., num=NUM)
      grid_scan M1 START STOP NUM M2 START STOP NUM --detector D
          -> bluesky.plans.grid_scan([D], M1, START, STOP, NUM, M2, START, STOP, NUM)
      list_scan MOTOR 1,2,5 --detector D  -> bluesky.plans.list_scan([D], MOTOR, [1, 2, 5])
      count D1 [D2 ...] [NUM [DELAY]]     -> bluesky.plans.count([D1, D2], NUM, DELAY)
    The Python form works too: scan [D1,D2] MOTOR START STOP NUM (a list first = detectors).
  * the lab's plans take their devices as arguments, in order:
      polarization_scan ROTATOR METER ANGLES -> daqbridge.plans.polarization_scan(...)
{_RULES_TEXT}
  * --md KEY=VALUE adds to the run's metadata (a number, true/false, a list, or text).
  * `daqbridge run PLAN --help` shows one plan; `daqbridge run --list` lists every plan."""


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="lab profile (default: $DAQBRIDGE_PROFILE, else the embedded simulated lab)",
    )
    parser.add_argument(
        "--detector",
        "-d",
        action="append",
        default=[],
        metavar="ID",
        help="a detector for plans that take a detector list first (repeatable)",
    )
    parser.add_argument(
        "--md",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run metadata (repeatable)",
    )
    parser.add_argument("--no-table", action="store_true", help="no live table of the events")
    parser.add_argument("--no-plot", action="store_true", help="no live plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on moves")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds each instrument may take to connect (default: each driver's own)",
    )
    parser.add_argument(
        "--no-lab",
        action="store_true",
        help="run in this process even when a lab server is up (`daqbridge lab up`)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="log at INFO level and show tracebacks of failures"
    )


class _HelpWithPlans(argparse.Action):
    """``--help`` that lists the plans: built only when asked (it imports bluesky's plans)."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        try:
            listing = format_plan_list()
        except Exception as exc:  # noqa: BLE001 - help must still print
            listing = f"(the plan list is not available: {exc})"
        parser.epilog = f"{MAPPING}\n\nPlans:\n{_indent(listing)}"
        parser.print_help()
        parser.exit()


def _indent(text: str) -> str:
    return "\n".join(("  " + line) if line else line for line in text.splitlines())


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run one plan on the lab (e.g. run scan sim_stage_x -5 5 11 --detector sim_meter)",
        description=DESCRIPTION,
        epilog=MAPPING,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    p.add_argument(
        "-h", "--help", action=_HelpWithPlans, nargs=0, help="show this help and every plan"
    )
    p.add_argument("--list", action="store_true", help="list the plans and what they take")
    _add_options(p)
    p.add_argument("plan", nargs="?", metavar="PLAN", help="plan name (see --list)")
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="ARGS",
        help="the plan's arguments: device ids, numbers, lists, key=value",
    )
    p.set_defaults(func=run_command, run_parser=p)


# --- the command --------------------------------------------------------------------------------


def _split_words(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str], bool]:
    """Options written after PLAN are parsed here; the rest are the plan's words."""
    words = list(args.args)
    literal: list[str] = []
    if "--" in words:
        i = words.index("--")
        words, literal = words[:i], words[i + 1 :]
    opts = argparse.ArgumentParser(add_help=False, prog="daqbridge run")
    _add_options(opts)
    opts.add_argument("-h", "--help", action="store_true")
    later, rest = opts.parse_known_args(words)
    for key in ("detector", "md"):
        setattr(args, key, list(getattr(args, key)) + list(getattr(later, key)))
    for key in ("no_table", "no_plot", "no_progress", "no_lab", "debug"):
        setattr(args, key, getattr(args, key) or getattr(later, key))
    for key in ("profile", "connect_timeout"):
        if getattr(later, key) is not None:
            setattr(args, key, getattr(later, key))
    known = [a.option_strings for a in opts._actions]
    flags = sorted({s for strings in known for s in strings if s.startswith("--")})
    for word in rest:
        if _looks_like_option(word):
            name = word.split("=", 1)[0]
            close = difflib.get_close_matches(name, flags, n=2, cutoff=0.6)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise PlanArgumentError(
                f"unknown option {name!r} for daqbridge run.{hint}",
                fix="see `daqbridge run --help`; put `--` before plan arguments that start "
                "with a dash.",
            )
    return args, rest + literal, later.help


def _looks_like_option(word: str) -> bool:
    """``--name`` or ``-x``; not ``-5``, ``-.5``, ``-1e-3`` or the list ``-1,1,2``."""
    return word.startswith("--") or (len(word) > 1 and word[0] == "-" and word[1].isalpha())


def _plan_help(name: str) -> str:
    spec = resolve_plan(name)
    lines = [
        f"usage: {spec.usage()}",
        f"calls: {spec.python_form}",
        "",
    ]
    doc = inspect.getdoc(spec.func)
    if doc:
        lines += [doc, ""]
    keywords = spec.keywords()
    if keywords:
        lines.append(f"keywords (key=value): {', '.join(keywords)}; run metadata: --md KEY=VALUE")
    lines.append(f"Arguments: {RULES}.")
    return "\n".join(lines)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="daqbridge: %(levelname)s %(name)s: %(message)s"
        if debug
        else "daqbridge: %(message)s",
        stream=sys.stderr,
    )
    if debug:  # daqbridge's own story; bluesky's and httpx's INFO lines drown it
        logging.getLogger("daqbridge").setLevel(logging.INFO)
    else:
        # bluesky logs an aborted or failed run with its traceback; this command reports both
        # in one line of its own.
        logging.getLogger("bluesky").setLevel(logging.CRITICAL)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_twice)


def _not_twice(record: logging.LogRecord) -> bool:
    """The runtime logs a failed start-up and the end of a run that did not succeed; this
    command prints both itself."""
    if record.name == "daqbridge.runtime.runs":
        return False
    return not (
        record.name == "daqbridge.runtime" and str(record.msg).startswith("start-up failed")
    )


def _error(text: str) -> None:
    print(f"daqbridge run: error: {text}", file=sys.stderr)


def run_command(args: argparse.Namespace) -> int:
    if args.list:
        print(format_plan_list())
        return 0
    debug = args.debug
    try:
        args, words, wants_help = _split_words(args)
        debug = args.debug
        if args.plan is None:
            args.run_parser.print_usage(sys.stderr)
            _error("give a PLAN (see `daqbridge run --list`).")
            return EXIT_USAGE
        if wants_help:
            print(_plan_help(args.plan))
            return 0
        missing = missing_profile(args.profile)  # a --profile after PLAN is known only now
        if missing is not None:
            _error(str(missing))
            return EXIT_USAGE
        _setup_logging(args.debug)
        return _run(args, words)
    except PlanArgumentError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return EXIT_USAGE
    except DaqbridgeError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return getattr(exc, "exit_status", EXIT_FAILED)  # 2: not startable as configured
    except KeyboardInterrupt:
        print("daqbridge run: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, words: list[str]) -> int:
    from daqbridge.cli._session import (
        has_display,
        install_progress_bars,
        make_best_effort,
        resolve_profile,
    )
    from daqbridge.config import PathExists, load_profile

    spec = resolve_plan(args.plan)
    md = parse_md(args.md)
    profile = load_profile(resolve_profile(args.profile), device_cache=PathExists())
    # The first check, on the profile's device ids: a typo costs milliseconds, not a start-up.
    refs = {device_id: DeviceRef(device_id) for device_id in profile.device_ids()}
    early = build_plan_call(spec, words, refs, detectors=args.detector, md=md)

    command = shlex.join(
        ["daqbridge", "run", args.plan, *words]
        + [w for d in args.detector for w in ("--detector", d)]
        + [w for m in args.md for w in ("--md", m)]
        + (["--profile", args.profile] if args.profile else [])
    )
    if not args.no_lab:
        from daqbridge.cli._lab import find_lab

        lab = find_lab(profile)
        if lab is not None:
            return _run_on_lab(args, early, lab, command)

    # Tiled (two to three seconds to import) is imported on the runtime's catalog thread, beside
    # the instruments' start-up, and quietened there: not here first.
    from daqbridge.runtime import Runtime, ShutdownRequested

    print(
        f"daqbridge run: starting {profile.lab.name!r} ({profile.label}) for {early.describe()}",
        file=sys.stderr,
        flush=True,
    )
    runtime = Runtime.from_profile(
        profile,
        sigint="abort",
        connect_timeout=args.connect_timeout,
        md={"daqbridge_command": command},
    )
    uids: list[str] = []
    ended: dict[str, str] = {}  # uid -> what to call it, when not the command's outcome
    outcome = "failed"
    status = EXIT_FAILED
    plots = False
    try:
        RE = runtime.RE  # noqa: N806 - bluesky's name
        call = build_plan_call(spec, words, runtime.devices, detectors=args.detector, md=md)
        plan = call.make()  # runs the plan's own argument checks now
        RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")
        plots = not args.no_plot and has_display() and sys.stdout.isatty()
        if args.no_plot:  # headless, the runtime saves each run's plot as a PNG otherwise
            runtime.run_plots.png = False
        if not args.no_table or plots:
            RE.subscribe(make_best_effort(plots=plots, table=not args.no_table))
        if not args.no_progress:
            install_progress_bars(RE)
        print(f"plan: {call.describe()}", flush=True)
        try:
            runtime.run(plan)
        except ShutdownRequested as exc:
            outcome = "aborted" if exc.aborted else "stopped"
            status = 128 + exc.signum
            ended.update(
                (uid, _OUTCOME.get(str(exit_status), "interrupted"))
                for uid, exit_status in exc.exit_statuses.items()
            )
            _report_stop(exc, args.debug)
        except PlanArgumentError:
            raise
        except DaqbridgeError as exc:
            _report_failure(exc, uids, args.debug)
        except Exception as exc:  # noqa: BLE001 - a plan failure is a message, not a traceback
            _report_failure(exc, uids, args.debug)
        else:
            outcome = "done"
            status = 0
        _flush(runtime)
        for uid in uids:
            _print_read_back(runtime, uid, ended.get(uid, outcome))
    except KeyboardInterrupt:
        status = 130
        print("daqbridge run: interrupted; shutting the lab down", file=sys.stderr, flush=True)
    finally:
        report = runtime.close(reason=f"daqbridge run {outcome}")
    if not report.clean and status == 0:
        status = EXIT_FAILED
    if plots and status == 0:
        _keep_plots_open()
    return status


def _run_on_lab(args: argparse.Namespace, early: Any, lab: Any, command: str) -> int:
    """Hand the checked call to the lab that is up; its worker checks it again against the
    real devices (soft limits) before anything moves."""
    from daqbridge.cli._lab import submit_to_lab

    kwargs = {key: _by_id(value) for key, value in early.kwargs.items()}
    md = {**kwargs.pop("md", {}), "daqbridge_command": command}
    print(
        f"daqbridge run: the lab is up ({lab.control_addr}): running {early.describe()} there "
        "(--no-lab runs it in this process)",
        file=sys.stderr,
        flush=True,
    )
    return submit_to_lab(
        early.spec.name,
        [_by_id(value) for value in early.args],
        kwargs,
        md,
        lab=lab,
        table=not args.no_table,
    )


def _by_id(value: Any) -> Any:
    """Devices as their ids, the only form the queue server takes (its worker resolves them)."""
    if isinstance(value, DeviceRef):
        return value.id
    if isinstance(value, list | tuple):
        return [_by_id(v) for v in value]
    if isinstance(value, dict):
        return {k: _by_id(v) for k, v in value.items()}
    return value


_OUTCOME = {"success": "done", "abort": "aborted", "fail": "failed"}
"""A stop document's exit status, in this command's words."""


def _report_stop(stop: Any, debug: bool) -> None:
    """What a signal did to the run, in the stop documents' words (``ShutdownRequested``)."""
    name = stop.signal_name
    if not stop.exit_statuses:
        text = f"{name} received before the plan opened a run: nothing was measured."
    elif stop.aborted:
        text = f"{name} received: the run was aborted; its data is kept, marked 'abort'."
    else:
        statuses = ", ".join(f"{uid} {s!r}" for uid, s in stop.exit_statuses.items())
        text = (
            f"{name} received as the run ended: the run was not aborted (exit status "
            f"{statuses}); the lab is shut down."
        )
    print(f"daqbridge run: {text}", file=sys.stderr, flush=True)
    if stop.error is not None:
        # Part of the abort (a device's status failed by its own stop), not a second failure.
        log.info("while the run was being aborted: %s", _in_words(stop.error))
        if debug:
            traceback.print_exception(stop.error)


def _in_words(exc: BaseException) -> str:
    """The first daqbridge error of ``exc``'s chain (it names the instrument and the fix)."""
    cause = daqbridge_cause(exc)
    return str(cause) if cause is not None else f"{type(exc).__name__}: {exc}"


def _report_failure(exc: BaseException, uids: list[str], debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    text = _in_words(exc)
    _error(f"the plan failed: {text}")
    if uids:
        print(
            "daqbridge run: what was measured before the failure is kept (run marked 'fail').",
            file=sys.stderr,
        )
    if not debug:
        print("daqbridge run: --debug shows the traceback.", file=sys.stderr)


def _flush(runtime: Any) -> None:
    """Make every event readable from other processes before saying where the run is."""
    catalog = runtime.catalog
    if catalog is None:
        return
    try:
        catalog.flush(timeout=30)
    except DaqbridgeError as exc:
        log.warning("the catalog did not confirm every event yet: %s", exc)


def _print_read_back(runtime: Any, uid: str, outcome: str) -> None:
    lab = runtime.profile.lab
    if lab.catalog_uri:
        where_cli = f"--uri {shlex.quote(lab.catalog_uri)}"
        where_py = f"uri={lab.catalog_uri!r}"
    else:
        data = str(runtime.data_dir)
        where_cli = f"--data {shlex.quote(data)}"
        where_py = f"{data!r}, readonly=True"
    print(f"uid: {uid}")
    if outcome not in ("done", "stopped"):
        print(f"  ({outcome}: the events measured so far are in the catalog)")
    daqbridge, python = _commands_as_typed()
    print("read it back:")
    print(f"  {daqbridge} catalog show {uid} {where_cli}")
    print(
        f'  {python} -c "from daqbridge.catalog import open_catalog; '
        f"print(open_catalog({where_py}).client['{uid}'].primary.read())\"",
        flush=True,
    )


def _commands_as_typed() -> tuple[str, str]:
    """How to call daqbridge and this Python from the user's shell: the bare names only when
    they are the ones on PATH (the README installs into .venv without activating it, so
    pasting a bare ``daqbridge`` would say "command not found")."""
    import os
    import shutil

    on_path = shutil.which("daqbridge")
    here = os.path.join(os.path.dirname(sys.executable), "daqbridge")
    same = on_path is not None and os.path.realpath(on_path) == os.path.realpath(here)
    daqbridge = "daqbridge" if same else shlex.quote(here if os.path.exists(here) else "daqbridge")
    python_on_path = shutil.which("python")
    python = (
        "python"
        if python_on_path and os.path.realpath(python_on_path) == os.path.realpath(sys.executable)
        else shlex.quote(sys.executable)
    )
    return daqbridge, python


def _keep_plots_open() -> None:
    try:
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return
    if plt.get_fignums():
        print("daqbridge run: close the plot windows to exit.", file=sys.stderr, flush=True)
        plt.show(block=True)
