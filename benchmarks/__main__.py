"""Run every benchmark and print one table of ratios against their targets.

    python -m benchmarks [--only resources,scan] [--markdown] [--venv DIR] [--full]

Each ``benchmarks/bench_*.py`` module exposes ``run() -> list[dict]`` with rows
``{name, value, unit, target, ratio, ok}``. Figures are measured side by side in one run, as
ratios, because absolute times on a shared machine swing by 2x between runs; a ratio of two
things measured together is what stays comparable. A benchmark that fails to run is reported as
a row, not a crash, so one broken piece does not hide the others' figures. Benchmarks with a
long form run their quick form unless ``--full`` is given (bench_experiments: minutes at the
hardware's own speed).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _modules(only: set[str] | None) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        names = [n for n in names if n.removeprefix("bench_") in only or n in only]
    return names


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def machine() -> str:
    return (
        f"{platform.node() or 'unknown'}: {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--only", help="comma-separated benchmark names (e.g. resources,scan)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--venv", help="the venv bench_daily measures (its size and its daqbridge command)"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="the long form of benchmarks that have one (bench_experiments: full-size grids)",
    )
    args = parser.parse_args(argv)
    if args.venv:
        os.environ["DAQBRIDGE_BENCH_VENV"] = args.venv
    if args.full:
        os.environ["DAQBRIDGE_BENCH_FULL"] = "1"
    only = set(args.only.split(",")) if args.only else None
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    rows: list[dict] = []
    for name in _modules(only):
        t0 = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
            for row in mod.run():
                rows.append({"bench": name.removeprefix("bench_"), **row})
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            traceback.print_exc()
            rows.append(
                {
                    "bench": name.removeprefix("bench_"),
                    "name": "FAILED TO RUN",
                    "value": None,
                    "unit": "",
                    "target": None,
                    "ratio": None,
                    "ok": False,
                    "note": f"{type(exc).__name__}: {exc}",
                }
            )
        print(f"  {name} took {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    header = ["bench", "name", "value", "unit", "target", "ratio", "ok"]
    table = [[_fmt(r.get(h)) for h in header] for r in rows]
    print(f"\nmachine: {machine()}")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in table:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [
            max(len(h), *(len(t[i]) for t in table)) if table else len(h)
            for i, h in enumerate(header)
        ]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for line in table:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    missed = [r for r in rows if r.get("ok") is False]
    print(f"\n{len(rows)} figures, {len(missed)} missing their target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
