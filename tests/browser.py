"""Headless Chromium for the report tests and bench: Debian's chromium + chromedriver driven by selenium.

No browser is downloaded: the system's binaries are used, or the tests skip saying what to install.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# The documentation's pictures (README, docs/): rewritten from the tests' screenshots only when asked, with
# TOTALSEG_UPDATE_SCREENS=1, so that a test run leaves the checkout as it was.
SCREENS = Path(__file__).resolve().parents[1] / "bench" / "report_screens"

# Chromium's software WebGL2: ANGLE on SwiftShader (no GPU needed); Chromium only enables it for WebGL when
# asked to (--enable-unsafe-swiftshader), since it is also a fallback for untrusted pages on real machines.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1500,900")


def chromium_paths() -> tuple[str | None, str | None]:
    """(browser, driver) executables, each None when missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    return browser, shutil.which("chromedriver")


def missing_reason() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    browser, driver = chromium_paths()
    if browser is None or driver is None:
        return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'needs selenium (pip install -e ".[test]")'
    return None


def chromium_driver(profile: Path | None = None):
    """A selenium driver of a fresh headless Chromium (its own profile folder)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile or tempfile.mkdtemp(prefix='chromium_')}")
    # the performance log carries the DevTools network events: the tests check that nothing leaves the disk
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def requested_urls(driver) -> list[str]:
    """URLs the browser requested since the last call (DevTools Network.requestWillBeSent events)."""
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    """The browser window as ``tmp_path/name``; with ``TOTALSEG_UPDATE_SCREENS=1`` also a reduced copy (1200 px
    wide, 128 colours: small for git) in bench/report_screens/ for the documentation."""
    from PIL import Image

    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    if os.environ.get("TOTALSEG_UPDATE_SCREENS") == "1":
        picture = Image.open(shot).convert("RGB")
        picture = picture.resize((1200, round(picture.height * 1200 / picture.width)), Image.LANCZOS)
        SCREENS.mkdir(parents=True, exist_ok=True)
        picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(SCREENS / name, optimize=True)
    return shot
