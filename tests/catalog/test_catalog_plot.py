"""``daqbridge catalog plot`` on a real catalog: a PNG with no display, bluesky's peak stats."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from bluesky.callbacks.fitting import PeakStats
from ophyd.sim import det, motor

from daqbridge.catalog import DATA_ENV, open_catalog
from daqbridge.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scanned(template_dir, tmp_path_factory):
    """A 1-D peak scan and a count; returns (data dir, scan uid, live PeakStats, count uid)."""
    directory = tmp_path_factory.mktemp("plot") / "data"
    shutil.copytree(template_dir, directory, ignore=shutil.ignore_patterns("wal"))
    live = PeakStats("motor", "det")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(DATA_ENV, raising=False)
        with open_catalog(directory) as catalog:
            RE = RunEngine({}, context_managers=[])
            RE.subscribe(catalog.writer)
            # Off-centre so that min, max, com, cen and fwhm all differ from a symmetric guess.
            (uid,) = RE(bp.scan([det], motor, -2.2, 1.3, 15), live)
            (count_uid,) = RE(bp.count([det], 2))
            catalog.flush(timeout=60)
    return directory, uid, live, count_uid


def _printed(out: str) -> dict[str, list[float]]:
    numbers = {}
    for name in ("max", "min", "com", "cen", "fwhm"):
        line = re.search(rf"^\s+{name}\s+(.*)$", out, re.MULTILINE).group(1)
        numbers[name] = [float(v) for v in re.findall(r"[-+0-9.e]+", line)]
    return numbers


def test_plot_writes_png_and_prints_peakstats(scanned, tmp_path, capsys):
    directory, uid, live, _ = scanned
    target = tmp_path / "peak.png"
    assert main(["catalog", "plot", uid[:8], "-o", str(target), "--data", str(directory)]) == 0
    out = capsys.readouterr().out
    assert target.read_bytes()[:8] == PNG_MAGIC
    assert "peak statistics of det vs motor" in out
    printed = _printed(out)
    assert printed["max"] == pytest.approx([live.max[1], live.max[0]], rel=1e-5)
    assert printed["min"] == pytest.approx([live.min[1], live.min[0]], rel=1e-5, abs=1e-9)
    assert printed["com"] == pytest.approx([live.com], rel=1e-5)
    assert printed["cen"] == pytest.approx([live.cen], rel=1e-5)
    assert printed["fwhm"] == pytest.approx([live.fwhm], rel=1e-5)


def test_plot_of_a_count_is_a_clear_error(scanned, tmp_path, capsys):
    directory, _, _, count_uid = scanned
    target = tmp_path / "count.png"
    assert main(["catalog", "plot", count_uid, "-o", str(target), "--data", str(directory)]) == 1
    err = capsys.readouterr().err
    assert "is not a 1-D scan" in err and "Traceback" not in err
    assert not target.exists()


def test_the_other_catalog_commands_do_not_import_the_runtime(tmp_path):
    """``catalog plot`` draws with the runtime's plotting code, but registering it must not
    import the runtime package (the lab's devices, ophyd-async) into ``catalog list``."""
    code = (
        "import sys\n"
        "from daqbridge.cli import main\n"
        "try:\n"
        f"    main(['catalog', 'list', '--data', {str(tmp_path)!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('RUNTIME', 'daqbridge.runtime' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    ).stdout
    assert "RUNTIME False" in out, out
