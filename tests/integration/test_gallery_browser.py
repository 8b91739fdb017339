"""The gallery page in a real headless Chromium, opened from file://: filters, the detail view,
untrusted prompts shown as text, and a 10,000-image page that stays small in the DOM."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from sdbatch.gallery import PAGE_SIZE, build_gallery
from sdbatch.manifest import Manifest
from tests.unit.test_grid import NOW, make_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
XSS = "<img src=x onerror=window.__xss=1;alert(1)>"
XSS_SCRIPT = "</script><script>window.__xss=2</script>"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: apt-get install chromium")
    if not CHROMEDRIVER.exists():
        pytest.skip("chromedriver not installed: apt-get install chromium-driver")
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium not installed: pip install -e '.[test]'"
    )
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(driver, page: Path) -> float:
    """Load the page from file:// and wait for the first render; returns the seconds taken."""
    from selenium.webdriver.support.ui import WebDriverWait

    t0 = time.perf_counter()
    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.find_element("id", "count").text)
    return time.perf_counter() - t0


def cards(driver):
    return driver.find_elements("css selector", "#grid .card")


def assert_no_dialog(driver):
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - raises when no alert/confirm/prompt is open


@pytest.fixture(scope="module")
def small_gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery") / "out"
    specs = [
        dict(style=s, cfg=c, seed=1, colour=(40 * i, 90, 30 * int(c)))
        for i, s in enumerate(["bob", "braids", "ponytail"])
        for c in (5.0, 7.0)
    ]
    specs += [
        dict(style="bob", cfg=9.0, status="failed", error="CUDA out of memory"),
        dict(style="braids", cfg=9.0, status="nan", error="NaN in the image"),
        dict(style="evil", cfg=9.0, prompt=XSS, colour=(0, 0, 0)),
        dict(style="evil2", cfg=9.0, prompt=XSS_SCRIPT, colour=(0, 0, 0)),
    ]
    make_run(root, specs)
    page, n = build_gallery(root)
    assert page == root / "index.html" and n == len(specs)
    rows = {r["job_id"]: r for r in Manifest(root / "manifest").read().to_pylist()}
    return page, rows


def test_filters_detail_view_and_screenshot(browser, small_gallery):
    from selenium.webdriver.support.ui import Select

    page, rows = small_gallery
    open_page(browser, page)
    assert len(cards(browser)) == len(rows)
    assert browser.find_element("id", "count").text.startswith(f"{len(rows)} of {len(rows)}")
    statuses = {c.get_attribute("data-job"): c.get_attribute("data-status") for c in cards(browser)}
    assert statuses == {j: r["status"] for j, r in rows.items()}
    for card in cards(browser):  # failed and NaN rows: a placeholder and a badge, no image
        if card.get_attribute("data-status") != "ok":
            assert card.find_elements("css selector", "img") == []
            badge = card.find_element("css selector", ".badge").text
            assert badge == {"failed": "failed", "nan": "NaN"}[card.get_attribute("data-status")]
    # images load from file:// under the page's Content-Security-Policy
    loaded = browser.execute_script(
        "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
    )
    assert loaded == sum(r["status"] == "ok" for r in rows.values())

    Select(browser.find_element("css selector", "select[data-col='cfg']")).select_by_value("7")
    shown = {c.get_attribute("data-job") for c in cards(browser)}
    assert shown == {j for j, r in rows.items() if r["cfg"] == 7.0} and len(shown) == 3
    Select(browser.find_element("css selector", "select[data-col='vars.style']")).select_by_value(
        "braids"
    )
    (card,) = cards(browser)
    job = card.get_attribute("data-job")
    assert rows[job]["vars"] == [("style", "braids")] and rows[job]["cfg"] == 7.0

    card.click()
    detail = browser.find_element("id", "detail")
    assert detail.is_displayed()
    assert browser.find_element("id", "infotext").text == rows[job]["infotext"]
    assert "CFG scale: 7" in rows[job]["infotext"]
    browser.find_element("id", "copy").click()
    assert browser.find_element("id", "copied").text == "copied"
    png = browser.get_screenshot_as_png()
    with Image.open(io.BytesIO(png)) as shot:
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 20)
        assert shot.size[0] > 600 and (colours is None or len(colours) > 20)
    browser.find_element("id", "close").click()
    assert not detail.is_displayed()
    assert_no_dialog(browser)


def test_untrusted_prompts_are_text(browser, small_gallery):
    page, rows = small_gallery
    open_page(browser, page)
    browser.find_element("id", "q").send_keys("window.__xss")
    found = {c.get_attribute("data-job"): c for c in cards(browser)}
    assert {rows[j]["prompt"] for j in found} == {XSS, XSS_SCRIPT}
    for job, card in found.items():
        assert rows[job]["prompt"] in card.text.splitlines()  # literal text on the card
        card.click()
        assert browser.find_element("id", "infotext").text.startswith(rows[job]["prompt"])
        browser.find_element("id", "close").click()
    assert browser.execute_script("return window.__xss") is None
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert_no_dialog(browser)


def test_ten_thousand_images_render_one_page(browser, tmp_path):
    root = tmp_path / "big"
    make_run(root, [dict(colour=(200, 100, 0))])  # one real image, shared by every row
    base = Manifest(root / "manifest").read().to_pylist()[0]
    many = [
        {
            **base,
            "job_id": f"{i:016x}",
            "seed": i,
            "cfg": [5.0, 7.0, 9.0][i % 3],
            "status": "failed" if i % 997 == 0 else "ok",
            "started": NOW,
            "finished": NOW,
        }
        for i in range(1, 10_000)
    ]
    Manifest(root / "manifest").append(many)
    t0 = time.perf_counter()
    page, n = build_gallery(root)
    built = time.perf_counter() - t0
    assert n == 10_000
    loaded = open_page(browser, page)
    assert len(cards(browser)) == PAGE_SIZE <= 300
    assert browser.find_element("id", "count").text == "10000 of 10000 images, page 1 of 50"
    assert browser.find_element("css selector", "input[data-col='seed']")  # too many: a text box
    browser.find_element("id", "next").click()
    assert browser.find_element("id", "count").text.endswith("page 2 of 50")
    assert cards(browser)[0].get_attribute("data-job") == f"{PAGE_SIZE:016x}"
    print(f"10,000-row gallery: built in {built:.2f}s, first page in {loaded:.2f}s")
    assert built < 20 and loaded < 15
