"""A real headless Chromium driven by Selenium (Debian's ``chromium`` and ``chromium-driver``).

:func:`chromium` starts one browser with its own temporary profile and quits
it (chromedriver and the browser processes) at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PAGE_TIMEOUT_S = 60


def require_chromium() -> None:
    """Skip outside CI when the browser is not installed; in CI its absence is a failure."""
    missing = [p for p in (CHROMIUM, DRIVER) if not os.path.exists(p)]
    if missing and not os.environ.get("CI"):
        pytest.skip(
            f"not installed: {', '.join(missing)} (apt-get install chromium chromium-driver)"
        )
    assert not missing, f"not installed: {missing}"


@contextlib.contextmanager
def chromium(
    width: int = 1400, height: int = 1000, *, phone: bool = False
) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with browser console logging on.

    ``phone``: a touch screen of ``width`` x ``height`` CSS pixels (device emulation;
    a headless window cannot be narrower than 500 px).
    """
    require_chromium()
    profile = tempfile.mkdtemp(prefix="evchrome-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    if phone:
        metrics = {"width": width, "height": height, "pixelRatio": 2.0, "touch": True}
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT_S)
        driver.set_script_timeout(PAGE_TIMEOUT_S)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """Browser console entries of level SEVERE (errors) since the last call."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
