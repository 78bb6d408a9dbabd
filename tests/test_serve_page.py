"""``totalseg_serve``'s web page in a real headless Chromium: the token form, an upload through the file
chooser and one dropped on the page (a real ``drop`` event with a File), the job list with progress and
states, and each job's report page. With TOTALSEG_UPDATE_SCREENS=1 the page's picture in the documentation
(bench/report_screens/service.png) is made anew.
"""
from __future__ import annotations

import base64
import time

import pytest

from browser import chromium_driver, missing_reason, save_screenshot
from test_serve import CT_SM, TOKEN, Service, tiny_ct


@pytest.fixture(scope="module")
def browser():
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    driver = chromium_driver()
    yield driver
    driver.quit()


def _rows(driver) -> dict[str, str]:
    """{job id: state} of the page's job table (read in one script: the table is redrawn every second)."""
    return driver.execute_script("""
        const rows = {};
        for (const tr of document.querySelectorAll("#jobs tbody tr")) rows[tr.id.slice(4)] = tr.dataset.state;
        return rows;""")


def _texts(driver, selector: str, attribute: str = "textContent") -> list[str]:
    return driver.execute_script(f"return [...document.querySelectorAll(arguments[0])].map(e => e.{attribute})",
                                 selector)


def _until(condition, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError("the page did not get there")


def test_page_uploads_lists_and_opens_reports(browser, tmp_path, fake_home):
    tiny = tiny_ct(CT_SM, tmp_path / "abdomen.nii.gz")
    service = Service(tmp_path / "data", fake_home).start()
    try:
        browser.get(service.url + "/")
        browser.find_element("name", "token").send_keys(TOKEN)
        browser.find_element("css selector", "form button").click()
        _until(lambda: browser.find_elements("id", "drop"))
        assert browser.find_element("id", "empty").is_displayed()

        browser.find_element("id", "fastest").click()
        browser.find_element("id", "statistics").click()
        browser.find_element("id", "file").send_keys(str(tiny))  # the file chooser
        first = _until(lambda: list(_rows(browser)))[0]
        payload = base64.b64encode(tiny.read_bytes()).decode()
        browser.execute_script("""
            const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "dropped.nii.gz"));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
        """, payload)
        browser.find_element("id", "extra").send_keys("{not json")  # a typo is said on the page, nothing sent
        browser.find_element("id", "file").send_keys(str(tiny))
        _until(lambda: "not valid JSON" in browser.find_element("id", "message").text)
        browser.find_element("id", "extra").clear()
        browser.find_element("id", "file").send_keys(str(tmp_path / "data" / "jobs.sqlite"))  # refused by the API
        _until(lambda: "NIfTI" in browser.find_element("id", "message").text)

        rows = _until(lambda: len(_rows(browser)) == 2 and _rows(browser))
        assert len(_texts(browser, ".bar span")) == 2
        done = _until(lambda: all(s == "done" for s in _rows(browser).values()) and _rows(browser))
        assert set(done) == set(rows) and first in done
        assert _texts(browser, f"#job-{first} td.options") == ["total, fastest, ml, statistics"]
        links = _texts(browser, f"#job-{first} .files a")
        assert links == ["segmentation.nii.gz", "statistics.json", "report"] or links == \
            ["segmentations.zip", "statistics.json", "report"]
        widths = _texts(browser, ".bar span", "style.width")
        assert all("100%" in w for w in widths), widths
        with service.client() as client:  # more jobs for the picture: a corrupt upload, one running, one queued
            client.post("/api/jobs", files={"file": ("cut.nii.gz", tiny.read_bytes()[:30000])})
            for options in [{"fastest": True, "roi_subset": ["liver", "spleen"], "ml": True}, {"fastest": True}]:
                service.submit(client, tiny, options)
        _until(lambda: "failed" in _rows(browser).values() and len(_rows(browser)) == 5)
        failed = _texts(browser, "td.state-failed .error-line")
        assert failed and failed[0].startswith("cannot read input file input.nii.gz") and str(tmp_path) not in failed[0]
        browser.execute_script("say('')")
        save_screenshot(browser, tmp_path, "service.png")

        browser.execute_script(f"document.querySelector('#job-{first} .files a:last-child').click()")
        _until(lambda: "totalseg report" in browser.title)
        _until(lambda: browser.execute_script("return document.querySelectorAll('canvas').length") > 0)
        browser.back()
        _until(lambda: browser.find_elements("id", f"job-{first}"))
        browser.execute_script(f"document.querySelector('#job-{first} button').click()")  # delete
        _until(lambda: first not in _rows(browser))
    finally:
        service.stop()
