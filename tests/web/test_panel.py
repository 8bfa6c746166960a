"""The panel in a real browser on the simulated lab: the overview, run control from the form,
live plots, the lease table, aborting from the page, the history with its CSV.

The tests share one lab and one panel (tests/web/conftest.py) and run in file order: the form's
scan, then the refused argument, then the long count that is watched in the lease table and
aborted.
"""

from __future__ import annotations

import csv
import io
import re
import time
import urllib.request

import pytest
from selenium.webdriver.common.by import By

from daqbridge.cli._plan_args import DeviceRef, build_plan_call, resolve_plan
from daqbridge.config import PathExists, load_profile
from daqbridge.errors import PlanArgumentError

from .conftest import METER_REPLY_DELAY as DELAY
from .conftest import fill_plan_form as _fill
from .conftest import open_page, screenshot, wait_page

pytestmark = pytest.mark.slow

SCAN_POINTS = 5


def _cells(browser, table: str) -> dict[str, list[str]]:
    """The table's rows by device, resource, run uid or field, read in one go: the page redraws its
    tables as reports arrive, so element references would go stale between two reads."""
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(r => ["
        "r.dataset.device || r.dataset.resource || r.dataset.uid || r.dataset.field,"
        "Array.from(r.cells).map(c => c.textContent)])",
        f"#{table} tbody tr",
    )
    return dict((key, cells) for key, cells in rows)


def test_the_page_lists_every_instrument_with_a_value_and_its_units(lab, panel, browser):
    profile = load_profile(lab.profile, device_cache=PathExists())
    instruments = [inst.id for inst in profile.instruments]
    open_page(browser, panel.url)

    def every_instrument_has_a_value(d):
        rows = _cells(d, "instruments")
        with_value = {device for device, cells in rows.items() if " = " in cells[5]}
        missing = [i for i in instruments if not any(v.startswith(i) for v in with_value)]
        return rows if not missing else False

    rows = wait_page(browser, every_instrument_has_a_value)
    assert set(profile.device_ids()) - {"sim_rotators", "sim_stage"} <= set(rows)
    assert rows["sim_meter_legacy"][1] == "legacy"
    assert rows["sim_stage_x"][3] == "sim://esp300?name=sim_stage"
    assert rows["sim_stage_x"][4] == "connected"
    assert "sim_stage_x = 0 mm" in rows["sim_stage_x"][5]
    screenshot(browser, "overview")


@pytest.fixture(scope="module")
def form_scan(panel, browser):
    """A scan queued from the form, seen through to its stop document in the page."""
    open_page(browser, panel.url)
    _fill(
        browser,
        "scan",
        {"motor": "sim_stage_x", "start": "-1", "stop": "1", "num": str(SCAN_POINTS)},
        detectors=["sim_meter"],
        md="sample=web-A1",
    )
    # The page opens on the lab's last run (test_camera.py's count): wait for this one's end.
    return wait_page(
        browser,
        lambda d: d.execute_script(
            "const r = window.daqbridgePanel.run;"
            "return r && r.start.sample === 'web-A1' && r.stop && r.stop.exit_status === 'success'"
            " && r.start.uid"
        ),
    )


def test_a_scan_started_from_the_form_shows_its_points_in_the_live_plot(browser, form_scan):
    plot = browser.find_element(By.ID, "live-plot")
    assert plot.get_attribute("data-points") == str(SCAN_POINTS)
    assert len(plot.find_elements(By.TAG_NAME, "circle")) == SCAN_POINTS
    assert browser.find_element(By.ID, "peak-stats").text.startswith("peak ")
    screenshot(browser, "scan")


def test_the_overview_follows_the_scan(browser, form_scan):
    wait_page(browser, lambda d: "sim_stage_x = 1 mm" in _cells(d, "instruments")["sim_stage_x"][5])


def test_the_scan_is_in_history_with_a_csv_of_its_points(panel, browser, form_scan):
    def the_run_ended(d):
        # The list may show the run while the catalog has only its start; then its end.
        cells = _cells(d, "history-runs").get(form_scan)
        return cells if cells and cells[4] != "running" else False

    cells = wait_page(browser, the_run_ended)
    assert cells[1:3] == ["scan", "web-A1"]
    assert cells[4] == "success"
    href = browser.execute_script(
        "return document.querySelector(`#history-runs tr[data-uid='${arguments[0]}'] a.csv`).href",
        form_scan,
    )
    with urllib.request.urlopen(href, timeout=30) as reply:
        table = list(csv.DictReader(io.StringIO(reply.read().decode())))
    assert len(table) == SCAN_POINTS
    assert [float(r["sim_stage_x"]) for r in table] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    browser.execute_script(
        "document.querySelector(`#history-runs tr[data-uid='${arguments[0]}']`).cells[0].click()",
        form_scan,
    )
    wait_page(browser, lambda d: d.find_element(By.ID, "run-plot").get_attribute("data-points")
              == str(SCAN_POINTS))  # fmt: skip
    screenshot(browser, "history")


def test_a_grid_scan_fills_in_as_an_image(browser, form_scan):
    _fill(
        browser,
        "grid_scan",
        {
            "motor": "sim_stage_y", "start": "-1", "stop": "1", "num": "2",
            "motor2": "sim_stage_x", "start2": "-1", "stop2": "1", "num2": "3",
        },
        detectors=["sim_meter"],
    )  # fmt: skip
    wait_page(
        browser,
        lambda d: d.execute_script(
            "const r = window.daqbridgePanel.run;"
            "return r.start.plan_name === 'grid_scan' && r.stop !== null"
        ),
    )
    raster = browser.find_element(By.ID, "raster")
    assert raster.is_displayed()
    assert raster.get_attribute("data-pixels") == "6"
    screenshot(browser, "raster")


def _report_after(panel, when: float) -> dict:
    """The first snapshot with a worker report taken after ``when`` on an idle lab."""
    return panel.wait_for(
        lambda s: s["manager"].get("manager_state") == "idle" and s["worker"]["time"] > when and s
    )


def test_a_bad_argument_shows_the_validators_message_and_nothing_moves(panel, browser, form_scan):
    def stage_lines(snapshot):
        return snapshot["worker"]["simulators"]["instruments"]["sim_stage"]["lines_received"]

    # What `daqbridge run scan sim_stage_x -1 1 2.5 --detector sim_meter` says, word for word.
    with pytest.raises(PlanArgumentError) as refused:
        build_plan_call(
            resolve_plan("scan"),
            ["sim_stage_x", "-1", "1", "2.5"],
            {"sim_stage_x": DeviceRef("sim_stage_x"), "sim_meter": DeviceRef("sim_meter")},
            detectors=["sim_meter"],
        )
    before = _report_after(panel, time.time())  # the runs before this test are over
    _fill(
        browser,
        "scan",
        {"motor": "sim_stage_x", "start": "-1", "stop": "1", "num": "2.5"},
        detectors=["sim_meter"],
    )
    wait_page(
        browser,
        lambda d: d.find_element(By.ID, "run-message").get_attribute("class") == "message refused",
    )
    shown = browser.find_element(By.ID, "run-message").get_attribute("textContent")
    assert shown == str(refused.value)
    # A status report taken after the refusal: the stage's simulator received nothing since.
    after = _report_after(panel, time.time())
    # The panel's own readings between runs may query the stage's position ("1TP?"); the
    # refused scan would have sent it moves and set-ups, none of them a query. Nor a stop: at
    # the end of every plan bluesky stops the movables it touched (the grid scan before this
    # test), and the ESP300 driver sends that "nST" from its worker thread, which may be after
    # the manager is idle again. A stop moves nothing.
    new = stage_lines(after) - stage_lines(before)
    received = after["worker"]["simulators"]["instruments"]["sim_stage"]["recent_lines"]
    assert new <= len(received), "more lines than the report carries: cannot tell"
    commands = [
        line
        for line in received[len(received) - new :]
        if not line.endswith("?") and not re.fullmatch(r"\d*ST", line)
    ]
    assert commands == [], f"the stage received commands: {received[-new:]}"
    assert after["manager"]["items_in_history"] == before["manager"]["items_in_history"]
    assert after["queue"] == []
    screenshot(browser, "refused")


@pytest.fixture(scope="module")
def long_count(panel, browser, form_scan):
    _fill(browser, "count", {"num": "100000", "delay": "0"}, detectors=["sim_meter"])
    wait_page(
        browser,
        lambda d: d.execute_script(
            "const r = window.daqbridgePanel.run;"
            "return r && r.start.plan_name === 'count' && r.events > 0"
        ),
    )
    return browser.execute_script("return window.daqbridgePanel.run.start.uid")


def test_the_lease_table_shows_the_scans_holder_while_it_runs(browser, long_count):
    def meter_held_by_the_scan(d):
        # The count's reads hold the meter's port as "sim_meter"; the legacy twin's poller on
        # the same port holds it as "sim_meter_legacy", and waits behind the count.
        meter = _cells(d, "leases").get(f"sim://newport1830c?name=sim_meter&reply_delay={DELAY}")
        return meter if meter and meter[2] == "sim_meter" else False

    held = wait_page(browser, meter_held_by_the_scan)
    assert held[1] == "open"
    assert held[3].endswith("ms")
    screenshot(browser, "leases")


def test_the_shadow_table_compares_the_meters_legacy_and_native_readings(browser, long_count):
    def meter_compared(d):
        row = _cells(d, "shadow").get("sim_meter_power")
        return row if row and row[1] != "-" and row[2] != "-" else False

    native, legacy, difference = (float(v) for v in wait_page(browser, meter_compared)[1:])
    assert difference == pytest.approx(native - legacy, rel=1e-3, abs=1e-6)


def test_a_long_count_aborted_from_the_page_ends_abort_in_the_catalog(panel, browser, long_count):
    browser.find_element(By.CSS_SELECTOR, '#controls button[data-action="abort"]').click()
    wait_page(browser, lambda d: "abort" in d.find_element(By.ID, "progress-text").text)
    events = browser.execute_script("return window.daqbridgePanel.run.events")
    run = panel.wait_for(lambda s: s["manager"]["manager_state"] == "idle") and panel.get(
        f"api/runs/{long_count}"
    )
    assert run["stop"]["exit_status"] == "abort"
    assert run["stop"]["num_events"]["primary"] == events > 0
    assert len(run["columns"]["sim_meter_power"]) == events
    # The queue server puts an aborted plan back at the head of the queue; the panel takes it
    # off again, as `daqbridge run` does, so the next "Start queue" does not run it twice.
    panel.wait_for(lambda s: s["queue"] == [] and s["manager"]["items_in_queue"] == 0)
