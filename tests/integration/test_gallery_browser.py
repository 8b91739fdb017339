"""The gallery page in a real headless Chromium, opened from file://: filters, the detail view,
untrusted prompts shown as text, captions that keep the seed, small images drawn pixelated, and a
10,000-image page that stays small in the DOM."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from sdbatch.outputs.manifest import Manifest
from sdbatch.views.gallery import PAGE_SIZE, build_gallery
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
    # the times are printed for the reader, not asserted (tests never assert timings)
    print(f"10,000-row gallery: built in {built:.2f}s, first page in {loaded:.2f}s")


BIG_SEED = 9223372036854775807  # the largest seed the manifest holds: 19 digits
LONG_PROMPT = "a cat, " + "extremely detailed fluffy fur, " * 12 + "bob"
# True when every character of ``needle`` (a text inside ``card``) is drawn where a user sees it:
# inside the card and inside every ancestor that clips (an ellipsized or overflowing box)
VISIBLE_JS = """
const [card, needle] = arguments;
const walk = document.createTreeWalker(card, NodeFilter.SHOW_TEXT);
for (let n = walk.nextNode(); n; n = walk.nextNode()) {
  const at = n.data.indexOf(needle);
  if (at < 0) continue;
  const range = document.createRange();
  range.setStart(n, at);
  range.setEnd(n, at + needle.length);
  let c = card.getBoundingClientRect();
  c = {left: c.left, right: c.right, top: c.top, bottom: c.bottom};
  for (let e = n.parentElement; e !== card; e = e.parentElement) {
    if (getComputedStyle(e).overflowX === "visible") continue;
    const b = e.getBoundingClientRect();
    c = {left: Math.max(c.left, b.left), right: Math.min(c.right, b.right),
         top: Math.max(c.top, b.top), bottom: Math.min(c.bottom, b.bottom)};
  }
  const rects = [...range.getClientRects()].filter((r) => r.width > 0);
  return rects.length > 0 && rects.every((r) => r.left >= c.left - 0.5 &&
    r.right <= c.right + 0.5 && r.top >= c.top - 0.5 && r.bottom <= c.bottom + 0.5);
}
return null;
"""


def checkerboard(path: Path, size: int, cell: int = 2) -> None:
    """Black and white squares: drawn pixelated they stay black and white, smoothed they blur."""
    im = Image.new("L", (size, size))
    im.putdata([255 * ((x // cell + y // cell) % 2) for y in range(size) for x in range(size)])
    im.save(path)


def grey_share(png: bytes) -> float:
    """The share of pixels neither near black nor near white, in a screenshot."""
    with Image.open(io.BytesIO(png)) as shot:
        hist = shot.convert("L").histogram()
    return sum(hist[40:216]) / sum(hist)


@pytest.fixture(scope="module")
def sized_gallery(tmp_path_factory):
    """32x32 images (the embedded model's size) beside a 512x512 one, big seeds, a long prompt."""
    root = tmp_path_factory.mktemp("sized") / "out"
    small = [
        dict(job_id="s0", style="bob", seed=BIG_SEED, prompt=LONG_PROMPT, colour=(0, 0, 0)),
        dict(job_id="s1", style="braids", seed=4294967295, colour=(0, 0, 0)),
        dict(job_id="f0", style="ponytail", seed=7, status="failed", error="CUDA out of memory"),
    ]
    make_run(root / "small", small, size=32)
    make_run(root / "big", [dict(job_id="b0", style="bob", seed=3, colour=(0, 0, 0))], size=512)
    checkerboard(root / "small" / "images" / "s0.png", 32)
    checkerboard(root / "small" / "images" / "s1.png", 32)
    checkerboard(root / "big" / "images" / "b0.png", 512)
    page, n = build_gallery(root)
    assert n == 4
    return page


def card_of(driver, job: str):
    return driver.find_element("css selector", f"#grid .card[data-job='{job}']")


def test_captions_show_the_seed_and_key_values(browser, sized_gallery):
    open_page(browser, sized_gallery)
    seen = {}
    for job, seed, style in [("s0", BIG_SEED, "bob"), ("s1", 4294967295, "braids"),
                             ("f0", 7, "ponytail"), ("b0", 3, "bob")]:  # fmt: skip
        card = card_of(browser, job)
        for text in (f"seed {seed}", "Euler a", "CFG 7", "20 steps", f"style: {style}"):
            seen[job, text] = browser.execute_script(VISIBLE_JS, card, text)
    assert all(seen.values()), [k for k, v in seen.items() if not v]
    # the long prompt is ellipsized on its own line; the card's tooltip holds all of it
    card = card_of(browser, "s0")
    assert card.get_attribute("title") == LONG_PROMPT
    assert browser.execute_script(VISIBLE_JS, card, "a cat, extremely") is True
    assert browser.execute_script(VISIBLE_JS, card, LONG_PROMPT) is False
    cut = browser.execute_script(
        """const e = [...arguments[0].querySelectorAll("*")].find((e) =>
             e.childElementCount === 0 && e.textContent === arguments[1]);
           return [getComputedStyle(e).textOverflow, e.scrollWidth > e.clientWidth];""",
        card,
        LONG_PROMPT,
    )
    assert cut == ["ellipsis", True]


def wait_rendering(driver, element, want: str) -> str:
    """The image's computed ``image-rendering`` once it has loaded (``want`` or a timeout)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    get = "const i = arguments[0]; return i.complete && i.naturalWidth > 0 && "
    get += "getComputedStyle(i).imageRendering"
    try:
        WebDriverWait(driver, 3).until(lambda d: d.execute_script(get, element) == want)
    except TimeoutException:
        pass
    return driver.execute_script(get, element)


def test_small_images_are_drawn_pixelated_big_ones_smooth(browser, sized_gallery):
    open_page(browser, sized_gallery)
    thumb = card_of(browser, "s0").find_element("css selector", "img")
    assert wait_rendering(browser, thumb, "pixelated") == "pixelated"
    assert thumb.size["width"] >= 4 * 32  # a 32x32 image, drawn 4x or more
    assert grey_share(thumb.screenshot_as_png) < 0.05  # crisp squares, not a grey blur
    big = card_of(browser, "b0").find_element("css selector", "img")
    assert wait_rendering(browser, big, "auto") == "auto"  # 512 px in a small card: smoothed
    assert grey_share(big.screenshot_as_png) > 0.5

    card_of(browser, "s1").click()  # the detail view draws it 256 px wide: pixelated too
    full = browser.find_element("id", "full")
    assert wait_rendering(browser, full, "pixelated") == "pixelated"
    assert full.size["width"] >= 256 and grey_share(full.screenshot_as_png) < 0.05
    browser.find_element("id", "close").click()
    card_of(browser, "b0").click()  # shown at its own size or smaller: smooth
    assert wait_rendering(browser, full, "auto") == "auto"
    browser.find_element("id", "close").click()


def test_detail_view_shows_file_name_and_job_id(browser, sized_gallery):
    open_page(browser, sized_gallery)
    card_of(browser, "s1").click()
    detail = browser.find_element("id", "detail")
    lines = detail.text.splitlines()  # what is visible, line by line
    assert "Job id: s1" in lines and "File: small/images/s1.png" in lines
    link = browser.find_element("id", "dfile")
    assert link.is_displayed() and link.get_attribute("href").endswith("/small/images/s1.png")
    assert browser.find_element("id", "infotext").text.startswith("a cat, braids")
    assert "CFG scale: 7" in lines and "Seed: 4294967295" in lines and "style: braids" in lines
    browser.find_element("css selector", "body").send_keys("\ue014")  # ArrowRight: next image
    lines = detail.text.splitlines()
    assert "Job id: s1" not in lines and any(line.startswith("Job id: ") for line in lines)
    browser.find_element("id", "close").click()

    card_of(browser, "f0").click()  # a failed job: its id, no file, the error
    lines = detail.text.splitlines()
    assert "Job id: f0" in lines and "File: (none)" in lines and "CUDA out of memory" in lines
    assert browser.find_element("id", "dfile").get_attribute("href") is None
    browser.find_element("id", "close").click()
