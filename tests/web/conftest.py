"""Fixtures of the web panel's tests: one lab server for the whole package, panels on it, and
Debian's headless chromium driven by selenium.

The lab (``daqbridge lab up``: Redis, the document proxy, the RE Manager whose worker starts the
simulated lab) takes most of the package's time, so every test shares one, started in a
temporary HOME and data directory and brought down at the end. Its profile is the embedded
simulated lab with two changes: the power meter's simulator answers after 20 ms, as a real
1830-C at its slow filter does, so a transaction holds the port long enough to be seen in the
lease table while a scan runs; the camera's region holds the simulated spot off-centre.

Every wait is bounded and waits for the condition the test is about (WebDriverWait, or a loop
on the HTTP API); nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daqbridge.cli._lab import LabProcess
from daqbridge.config import Profile

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)
REDIS = shutil.which("redis-server")
LAB_TIMEOUT = 300.0
PANEL_START = 60.0
WAIT = 60.0
"""Seconds a page condition may take on a loaded 2-core machine (a bound, not a pause)."""
SCREENSHOTS = os.environ.get("DAQBRIDGE_WEB_SCREENSHOTS")
"""Directory for the screenshots of docs/web.md (docs/img/web when the docs are refreshed)."""
METER_REPLY_DELAY = 0.02
CAMERA_ROI = "roi = { s1 = 0, s2 = 511, p1 = 0, p2 = 511 }"
OFF_CENTRE_ROI = "roi = { s1 = 700, s2 = 1211, p1 = 900, p2 = 1411 }"
"""The simulated camera's spot sits at the sensor's centre (1024, 1024), outside the profile's
region: this region puts it off-centre in the frame (column 324, row 124 of 512), so a frame
shown mirrored or transposed would not match the file."""


def _skip_reason() -> str | None:
    for module, why in (
        ("selenium", "selenium is not installed (pip install -e '.[test]')"),
        ("bluesky_queueserver", "bluesky-queueserver is not installed"),
        ("bluesky_queueserver_api", "bluesky-queueserver-api is not installed"),
    ):
        try:
            __import__(module)
        except ImportError:
            return why
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "no chromium/chromedriver: run tests/web/install_chromium.sh"
    if REDIS is None:
        return "redis-server is not installed: run tests/runtime/install_redis.sh"
    return None


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAQBRIDGE_DATA", "DAQBRIDGE_PROFILE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DISPLAY", None)
    env.update(extra)
    return env


def daqbridge(*args: str) -> list[str]:
    return [sys.executable, "-m", "daqbridge", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, root: Path, data: Path, profile: Path, env: dict[str, str]) -> None:
        self.up_output = ""
        """What ``lab up`` printed (its stderr): the panel's address among it."""
        self.root = root
        self.data = data
        self.profile = profile
        self.env = env

    @property
    def state(self) -> dict[str, Any]:
        return json.loads((self.data / "lab.json").read_text())

    def cli(self, *args: str, timeout: float = LAB_TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run(
            daqbridge(*args), env=self.env, cwd=self.root, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


@pytest.fixture(scope="package")
def lab(tmp_path_factory) -> Iterator[Lab]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("web-lab")
    data = root / "data"
    home = root / "home"
    home.mkdir()
    text = Path(Profile.default_path()).read_text()
    meter = 'port = "sim://newport1830c?name=sim_meter"'
    assert meter in text, "the embedded profile's meter port changed: update this fixture"
    text = text.replace(
        meter, f'port = "sim://newport1830c?name=sim_meter&reply_delay={METER_REPLY_DELAY}"'
    )
    assert CAMERA_ROI in text, "the embedded profile's camera region changed: update this fixture"
    text = text.replace(CAMERA_ROI, OFF_CENTRE_ROI)
    profile = root / "lab.toml"
    profile.write_text(text)
    the_lab = Lab(root, data, profile, child_env(HOME=str(home), DAQBRIDGE_DATA=str(data)))
    up = the_lab.cli("lab", "up", "--profile", str(profile))
    started = the_lab.state if (data / "lab.json").exists() else {}
    the_lab.up_output = up.stderr
    try:
        assert up.returncode == 0, f"lab up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}"
        yield the_lab
    finally:
        if (data / "lab.json").exists():
            the_lab.cli("lab", "down", "--profile", str(profile))
        for key in ("redis", "documents", "manager", "catalog"):
            if started.get(key):
                proc = LabProcess(**started[key])
                if proc.alive():
                    os.kill(proc.pid, signal.SIGKILL)


class Panel:
    """One ``daqbridge web`` process on the lab (``attach``: the one ``lab up`` started)."""

    proc: subprocess.Popen | None

    @classmethod
    def attach(cls, lab: Lab) -> Panel:
        said = [line for line in lab.up_output.splitlines() if "the web panel is on" in line]
        assert said, f"lab up did not start the web panel:\n{lab.up_output}"
        panel = cls.__new__(cls)
        panel.url = said[0].split(" on ", 1)[1].split()[0]
        panel.proc = None
        panel.lines = said
        panel.profile = str(lab.profile)
        return panel

    def __init__(self, lab: Lab, *args: str, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.host = host
        self.profile = str(lab.profile)
        argv = daqbridge(
            "web", "--profile", str(lab.profile), "--host", host, "--port", str(self.port), *args
        )
        self.proc = subprocess.Popen(
            argv, env=lab.env, cwd=lab.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        deadline = time.monotonic() + PANEL_START
        # The panel prints its address once it is subscribed to the lab's documents.
        while not any(" on http://" in line for line in self.lines):
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"daqbridge web exited: {self.proc.stderr.read()}")
            self.lines.append(line)
            assert time.monotonic() < deadline, f"daqbridge web did not start: {self.lines}"
        self.url = f"http://127.0.0.1:{self.port}/"

    @property
    def token(self) -> str | None:
        for line in self.lines:
            if line.startswith("daqbridge web: token "):
                return line.split()[3]
        return None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=30) as reply:
            body = reply.read().decode()
        return json.loads(body) if path.startswith("api/") and not path.endswith("csv") else body

    def post(self, path: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path.lstrip("/"),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_for(self, condition: Callable[[dict], Any], timeout: float = WAIT) -> Any:
        """Until ``condition(snapshot)`` is true; returns its value."""
        deadline = time.monotonic() + timeout
        snap: dict = {}
        while time.monotonic() < deadline:
            snap = self.get("api/snapshot")
            value = condition(snap)
            if value:
                return value
            time.sleep(0.2)  # a polling interval between two looks, not a synchronisation
        raise AssertionError(f"condition not met within {timeout} s; last snapshot: {snap}")

    def stop(self) -> None:
        if self.proc is None:
            return  # lab down stops the panel lab up started
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(scope="package")
def panel(lab) -> Panel:
    """The panel ``daqbridge lab up`` started with the lab."""
    return Panel.attach(lab)


@pytest.fixture(scope="package")
def browser(lab) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile_dir = tempfile.mkdtemp(prefix="daqbridge-chromium-")
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile_dir}", "--window-size=1400,1700",
    ):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile_dir, ignore_errors=True)


def open_page(browser: Any, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, WAIT).until(
        lambda d: d.execute_script("return document.body.dataset.ready === '1'")
    )


def wait_page(browser: Any, condition: Callable[[Any], Any], timeout: float = WAIT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition)


def screenshot(browser: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(SCREENSHOTS) / f"{name}.png"))


def fill_plan_form(
    browser: Any, plan: str, values: dict[str, str], detectors=(), md: str = ""
) -> None:
    """Fill the run form as a user does and press "Queue and start"."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "plan-select")).select_by_value(plan)
    for name, value in values.items():
        field = browser.find_element(By.CSS_SELECTOR, f'#plan-fields [data-field="{name}"]')
        if field.tag_name == "select":
            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)
    chooser = Select(browser.find_element(By.ID, "detectors"))
    chooser.deselect_all()
    for d in detectors:
        chooser.select_by_value(d)
    browser.find_element(By.ID, "plan-md").clear()
    if md:
        browser.find_element(By.ID, "plan-md").send_keys(md)
    browser.find_element(By.ID, "queue-button").click()
