"""Who may act through the panel (daqbridge/web/_security.py).

The rule under test: bound to a loopback address (127.0.0.0/8, ::1) the panel acts without a
token; bound to any other address, 0.0.0.0 included, every action needs the token, even from a
browser that connects through 127.0.0.1. ``--read-only`` refuses every action; a page of another
site cannot act; and ``daqbridge web`` without a lab says how to start one.
"""

from __future__ import annotations

import subprocess

import pytest
from selenium.webdriver.common.by import By

from daqbridge.web import is_loopback

from .conftest import Panel, child_env, daqbridge, open_page, screenshot, wait_page

COUNT = {"plan": "count", "values": {"num": "1"}, "detectors": ["sim_meter"], "md": []}


def test_loopback_is_127_slash_8_and_ipv6_localhost_only():
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.1.2.3")
    assert not is_loopback("lab-pc.example.org")


def test_web_without_a_lab_says_how_to_start_one(tmp_path):
    env = child_env(HOME=str(tmp_path), DAQBRIDGE_DATA=str(tmp_path / "data"))
    done = subprocess.run(
        daqbridge("web", "--port", "0"), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "no lab is up for this profile" in done.stderr
    assert "`daqbridge lab up`" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def open_panel(lab):
    """A panel bound to every interface: not loopback by the rule, so actions need its token."""
    p = Panel(lab, host="0.0.0.0")
    yield p
    p.stop()


@pytest.mark.slow
def test_an_action_without_the_token_is_refused_beyond_loopback(open_panel, browser):
    before = open_panel.get("api/snapshot")["manager"]
    open_page(browser, open_panel.url)  # through 127.0.0.1, without the token
    assert browser.find_element(By.ID, "token-box").is_displayed()
    browser.find_element(By.CSS_SELECTOR, '#plan-form [data-field="num"]').clear()
    browser.find_element(By.CSS_SELECTOR, '#plan-form [data-field="num"]').send_keys("1")
    browser.find_element(By.ID, "queue-button").click()
    wait_page(
        browser,
        lambda d: d.find_element(By.ID, "run-message").get_attribute("class") == "message refused",
    )
    message = browser.find_element(By.ID, "run-message").get_attribute("textContent")
    assert "needs the panel's token" in message
    after = open_panel.get("api/snapshot")
    assert (
        after["queue"] == [] and after["manager"]["items_in_history"] == before["items_in_history"]
    )
    screenshot(browser, "token")


@pytest.mark.slow
def test_a_wrong_token_is_refused_and_the_right_one_runs_the_plan(open_panel):
    status, reply = open_panel.post("api/queue", COUNT, {"X-Daqbridge-Token": "guess"})
    assert status == 403 and "token is wrong" in reply["error"]
    status, reply = open_panel.post("api/queue", COUNT, {"X-Daqbridge-Token": open_panel.token})
    assert status == 200, reply
    done = open_panel.wait_for(
        lambda s: next((i for i in s["history"] if i["item_uid"] == reply["item_uid"]), None)
    )
    assert done["exit_status"] == "completed"


def test_a_read_only_panel_refuses_every_action(lab):
    p = Panel(lab, "--read-only")
    try:
        for path, body in (("api/queue", COUNT), ("api/control/start", {})):
            status, reply = p.post(path, body)
            assert status == 403 and "read-only" in reply["error"], (path, reply)
        assert p.get("api/config")["read_only"] is True
    finally:
        p.stop()


def test_a_page_of_another_site_cannot_act(panel):
    status, reply = panel.post("api/control/start", {}, {"Origin": "http://elsewhere.example"})
    assert status == 403 and "another site" in reply["error"]
    status, reply = panel.post("api/control/start", {}, {"Content-Type": "text/plain"})
    assert status == 415
    # DNS rebinding: a site's name made to point at 127.0.0.1 is same-origin with itself.
    rebound = {"Host": "rebound.example:80", "Origin": "http://rebound.example:80"}
    status, reply = panel.post("api/control/start", {}, rebound)
    assert status == 403 and "loopback address" in reply["error"]
