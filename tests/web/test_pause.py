"""Pause and resume from the page: the queue server pauses the run, no point is taken while it
is paused, and after Resume the run ends ``success`` in the catalog with every point.

Runs after test_panel.py on the shared lab (its abort leaves the queue empty).
"""

from __future__ import annotations

import time

import pytest
from selenium.webdriver.common.by import By

from .conftest import fill_plan_form, open_page, screenshot, wait_page

pytestmark = pytest.mark.slow

POINTS = 60
DELAY = "0.1"
"""Seconds between points: at least six seconds of run, for a pause that takes one round trip
through the page, the panel and the RE Manager however loaded the machine is."""


def _page_run(browser) -> dict:
    return browser.execute_script(
        "const r = window.daqbridgePanel.run;"
        "return r && r.start.sample === 'web-pause' &&"
        " {uid: r.start.uid, events: r.events, stop: r.stop && r.stop.exit_status}"
    )


def test_pause_and_resume_from_the_page_finish_the_run_with_all_its_points(panel, browser):
    open_page(browser, panel.url)
    fill_plan_form(
        browser,
        "count",
        {"num": str(POINTS), "delay": DELAY},
        detectors=["sim_meter"],
        md="sample=web-pause",
    )
    uid = wait_page(browser, lambda d: (r := _page_run(d)) and r["events"] > 0 and r["uid"])

    browser.find_element(By.CSS_SELECTOR, '#controls button[data-action="pause"]').click()
    panel.wait_for(lambda s: s["manager"].get("manager_state") == "paused")
    paused_at = time.time()
    wait_page(browser, lambda d: d.find_element(By.ID, "manager-state").text == "paused")
    screenshot(browser, "paused")
    while_paused = _page_run(browser)["events"]

    resumed_at = time.time()
    browser.find_element(By.CSS_SELECTOR, '#controls button[data-action="resume"]').click()
    wait_page(browser, lambda d: _page_run(d)["stop"] == "success")
    assert _page_run(browser)["events"] == POINTS

    run = panel.wait_for(lambda s: s["manager"]["manager_state"] == "idle") and panel.get(
        f"api/runs/{uid}"
    )
    assert run["stop"]["exit_status"] == "success"
    assert run["stop"]["num_events"]["primary"] == POINTS
    assert run["columns"]["seq_num"] == list(range(1, POINTS + 1))
    times = run["columns"]["time"]
    before = [t for t in times if t < paused_at]
    assert 0 < len(before) < POINTS, "the run was not paused part way"
    assert while_paused <= len(before)
    # The point count stopped growing: no point was taken while the queue server said paused.
    assert [t for t in times if paused_at <= t <= resumed_at] == []
