"""The fault campaign as a command: every (instrument, fault) pair, the outcome table.

    python -m benchmarks.fault_campaign [--repeats 5] [--points 8] [--seed N] [--markdown]
                                        [--only sim_meter,sim_laser] [--data DIR]

Starts the simulated lab of profiles/sim.toml (reply timeouts shortened, see
tests/stress/faults.py) on a fresh catalog, runs every cell ``--repeats`` times with the fault
injected at a random point of a ``--points``-point plan (also before the first event), then
reads every faulted run back from the catalog. Prints the table instrument x fault -> outcome,
every failure message and every invariant violation (a cell that hung, a failure without a
clear DaqbridgeError, a lost event, a next run that did not work). Exit status 1 if there was a
violation. This is the long form of tests/stress/test_faults.py, without pytest; the table in
docs/robustness.md comes from it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell (default 1)")
    parser.add_argument("--points", type=int, default=3, help="points per plan (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="replay a campaign")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--only", default="", help="comma-separated devices (table rows)")
    parser.add_argument("--data", default=None, help="data directory (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    for noisy in ("bluesky", "daqbridge", "tiled"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    import os

    from daqbridge.catalog import DATA_ENV
    from tests.stress import faults, support

    os.environ.pop(DATA_ENV, None)
    seed = args.seed if args.seed is not None else support.stress_seed()
    only = {d.strip() for d in args.only.split(",") if d.strip()}
    work = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    profile = work / "faults.toml"
    work.mkdir(parents=True, exist_ok=True)
    profile.write_text(support.lab_profile_text(uuid.uuid4().hex[:6], timeouts=faults.TIMEOUTS))

    t0 = time.monotonic()
    rt = support.start_runtime(profile, work / "data")
    faults.tune_for_campaign(rt)
    campaign = faults.Campaign(rt, seed=seed)
    points = max(2, args.points)
    try:
        for device, fault_name in faults.cells():
            if only and device not in only:
                continue
            for _ in range(max(1, args.repeats)):
                after = campaign.rng.randint(0, points - 1) if args.repeats > 1 else 1
                r = campaign.run_cell(device, fault_name, points=points, inject_after=after)
                flag = " !" if r.problems else ""
                print(f"{r.label:45s} {r.outcome:12s} {r.seconds:5.2f} s{flag}", flush=True)
        checked = campaign.check_catalog()
        traffic = support.protocol_problems(rt, campaign.scpi)
    finally:
        campaign.close()
        report = rt.close(reason="end of fault campaign")
    elapsed = time.monotonic() - t0
    print()
    print(
        f"fault campaign: seed {seed}, {len(campaign.results)} faulted runs, {checked} read "
        f"back from the catalog, {elapsed:.0f} s"
    )
    for line in faults.outcome_table(campaign.results, markdown=args.markdown):
        print(line)
    print("traffic after all faults:", "; ".join(traffic) or "clean")
    print(report.format())
    violations = [r for r in campaign.results if r.problems]
    return 1 if violations or traffic or not report.clean else 0


if __name__ == "__main__":
    sys.exit(main())
