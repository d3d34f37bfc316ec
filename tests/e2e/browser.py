"""A real browser on a real ``aim up``: Debian's Chromium driven by Selenium through chromedriver.

Tests skip, saying why, when the browser, its driver or Selenium is missing (``.ci/run`` installs
them from Debian's packages)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ray_head import free_ports

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# As root and offline: no sandbox, no GPU, no background calls to Google's hosts.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 800):
    """A headless Chromium under Selenium, or a skip that names what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
                    "(.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--window-size={width},{height}"]:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as e:      # a browser that cannot start here is an environment problem
        pytest.skip(f"Chromium did not start: {type(e).__name__}: {str(e).splitlines()[0]}")
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def aim_up(repo: Path, timeout_s: float = 60):
    """``aim up`` on 127.0.0.1 and a free port; yields its base URL."""
    port = free_ports(1)[0]
    aim = Path(sys.executable).parent / "aim"
    # Its own process group: `aim up` runs uvicorn and its workers as children, which outlive it when
    # only `aim up` is stopped
    server = subprocess.Popen([str(aim if aim.exists() else shutil.which("aim")), "up", "--repo", str(repo),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                stop(server, signal.SIGKILL)
                raise AssertionError(f"aim up did not serve {url}:\n{server.communicate()[0][-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop(server, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop(server, signal.SIGKILL)


def stop(server: subprocess.Popen, signum: int) -> None:
    """``signum`` to the server's whole process group (it leads it)."""
    try:
        os.killpg(server.pid, signum)
    except ProcessLookupError:          # all gone already
        pass


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.TAG_NAME, "body").text


def dismiss_popups(driver) -> None:
    """Aim's 'Join the community' card covers part of the page."""
    from selenium.webdriver.common.by import By
    for button in driver.find_elements(By.XPATH, "//*[normalize-space(text())='Skip']"):
        with contextlib.suppress(Exception):
            button.click()
