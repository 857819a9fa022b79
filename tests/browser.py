"""A real browser for the console's tests: Debian's headless Chromium driven by Selenium
through its own chromedriver (nothing is downloaded), with a fresh profile, and a screenshot
helper that keeps each step's picture as a test artifact."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_SECONDS = 60.0
# What the project set-up installs (Makefile: browser): see PERFORMANCE.md, Browsers.
INSTALL_HINT = "run `make browser` (apt: chromium chromium-driver fonts-wqy-microhei)"


@contextmanager
def chromium(profile_dir: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile, quit when the block ends."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), f"no Chromium: {INSTALL_HINT}"
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach out
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile_dir}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser as a test drives it: waits that fail with what the page showed."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, shots_dir: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.shots_dir = shots_dir
        shots_dir.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return url.removeprefix(self.base_url)

    def until(self, what: Callable[[], Any], timeout: float = WAIT_SECONDS, why: str = "") -> Any:
        def check(_: object) -> Any:
            try:
                return what()
            except Exception:  # an element not there yet, or replaced while read
                return False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(check)
        except Exception as exc:
            shot = self.shot("failed")
            raise AssertionError(
                f"waited {timeout:.0f}s for {why or what}; at {self.path}, screenshot {shot}; "
                f"page text:\n{self.text()[:2000]}"
            ) from exc

    def find(self, css: str, timeout: float = WAIT_SECONDS) -> WebElement:
        element: WebElement = self.until(
            lambda: self.driver.find_element(By.CSS_SELECTOR, css), timeout, f"element {css!r}"
        )
        return element

    def all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self) -> str:
        try:
            text: str = self.driver.find_element(By.TAG_NAME, "body").text
        except Exception:
            return ""
        return text

    def shot(self, name: str) -> Path:
        path = self.shots_dir / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path
