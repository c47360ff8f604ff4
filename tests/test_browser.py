"""The explorers in a real browser: the built book's pages opened as files in headless Chromium, network off.

The book is built from the stored notebooks (execution off, as ``make book`` does) into a temporary folder,
or taken from ``$ANNOTATED_LLAMA_BOOK_HTML`` (a built ``_build/html``) when set. Chromium runs with every
host name unresolvable and a dead proxy, so nothing can come from the network. For each explorer the test
checks that it rendered, performs one interaction (pick a layer and a head, hover a cell, move a slider,
type in the search box) and checks that what it shows changed as its data says: the data is read back from
the JSON embedded in the page; the sampling numbers are checked against the package's own ``sample_next``
(see ``explorer_helpers.py``), the RoPE scores against ``explorers.rope_score`` (float64 complex numbers,
written separately from the page's script). Screenshots of each explorer go to ``_build/screenshots/``.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them when run as root, as CI
does) and ``selenium`` (requirements.txt).
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from annotated_llama import explorers
from explorer_helpers import package_probabilities

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "_build" / "screenshots"
PAGES = {  # page -> explorer kinds on it, in page order
    "03_embeddings": ["embedding_map"],
    "05_rope": ["rope"],
    "06_attention": ["attention"],
    "09_model_and_generation": ["sampling"],
    # plus chapter 10's explorers for each bigger model stored beside it (python -m annotated_llama explore)
    "10_looking_inside": ["logit_lens", "attention"]
    + ["logit_lens", "attention"] * len(list((ROOT / "notebooks" / "explorers").glob("10_*.json"))),
}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1600",
         # the network off: no host name resolves, and any proxied request goes to a closed port
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
LOCAL = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-extension:", "devtools:")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]


def _need(what: str, found, fix: str):
    if not found:
        pytest.fail(f"the browser test needs {what}, which is missing. Fix: {fix}", pytrace=False)
    return found


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    given = os.environ.get("ANNOTATED_LLAMA_BOOK_HTML")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("book")
    build = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(out),
             "--keep-going"]
    done = subprocess.run(build, capture_output=True, text=True, timeout=1200)
    html = out / "_build" / "html"
    if done.returncode != 0 or not (html / "notebooks").is_dir():
        pytest.fail(f"building the book failed ({' '.join(build)}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return html


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _need("selenium", importlib.util.find_spec("selenium"),
          f"{sys.executable} -m pip install -r requirements.txt")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = _need("Chromium", shutil.which("chromium") or shutil.which("chromium-browser"),
                     "apt-get install -y chromium chromium-driver (make test does it as root)")
    driver_path = _need("chromedriver", shutil.which("chromedriver"), "apt-get install -y chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _requests(driver) -> list[str]:
    """URLs the page asked for since the last call (from Chromium's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _open(driver, book: Path, page: str, kinds: list[str]):
    path = book / "notebooks" / f"{page}.html"
    assert path.is_file(), f"{path} was not built"
    driver.get_log("performance")  # drop what earlier pages logged
    driver.get(path.as_uri())
    driver.execute_async_script("""
        var done = arguments[arguments.length - 1], t0 = Date.now();
        (function wait() {
          var all = document.querySelectorAll('.al-explorer');
          var settled = Array.from(all).every(function(e){ return e.dataset.ready || e.dataset.error; });
          if ((all.length && settled) || Date.now() - t0 > 20000) done(); else setTimeout(wait, 50);
        })();""")
    roots = driver.find_elements("css selector", ".al-explorer")
    state = [(r.get_attribute("data-kind"), r.get_attribute("data-ready"), r.get_attribute("data-error"))
             for r in roots]
    assert [s[0] for s in state] == kinds, f"{page}: explorers found {state}"
    assert all(s[1] == "1" and s[2] is None for s in state), f"{page}: not all explorers rendered: {state}"
    external = [u for u in _requests(driver) if not u.startswith(LOCAL)]
    return roots, external


def _data(driver, root) -> dict:
    return driver.execute_script("return JSON.parse(arguments[0].querySelector('script.al-data').textContent)", root)


def _hover(driver, element):
    driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))", element)


def _set(driver, element, value, event="input"):
    """Set a form control's value as a user would and fire its event; returns the value the page holds."""
    return driver.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event(arguments[2], {bubbles: true}));"
        "return arguments[0].value;", element, str(value), event)


def _shot(driver, root, name):
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", root)
    root.screenshot(str(SHOTS / f"{name}.png"))


def _check_offline(page, external, roots, driver):
    # The explorers ask the network for nothing: no http(s) address in their markup or script...
    for root in roots:
        markup = driver.execute_script("return arguments[0].outerHTML + arguments[0].nextElementSibling.text", root)
        assert "src=\"http" not in markup and "href=\"http" not in markup and "fetch(" not in markup, page
    # ...and the page attempted no request outside the built files (MathJax included: the book serves its own
    # copy, see scripts/fetch_mathjax.sh).
    assert not external, f"{page}: requests to the network attempted: {external[:5]}"


def test_attention_explorers(book, browser):
    for page in ("06_attention", "10_looking_inside"):
        roots, external = _open(browser, book, page, PAGES[page])
        _check_offline(page, external, roots, browser)
        root = roots[PAGES[page].index("attention")]
        d = _data(browser, root)
        S, L, H = len(d["tokens"]), len(d["layers"]), d["n_heads"]
        # the sink column is framed, and the sink map has one cell per layer and head
        assert root.find_elements("css selector", ".al-sink-column")
        assert len(root.find_elements("css selector", ".al-sinkmap rect[data-layer]")) == L * H
        # pick the last layer and head with the menus, then hover the last query
        _set(browser, root.find_element("css selector", "select.al-layer"), L - 1, "change")
        _set(browser, root.find_element("css selector", "select.al-head"), H - 1, "change")
        assert (root.get_attribute("data-layer"), root.get_attribute("data-head")) == (str(d["layers"][-1]), str(H - 1))
        q = S - 1
        _hover(browser, root.find_element("css selector", f'g.al-query[data-query="{q}"]'))
        shown = [float(e.get_attribute("data-w")) for e in root.find_elements("css selector", ".al-readout .al-key")]
        start = q * (q + 1) // 2
        expected = [v / d["scale"] for v in d["w"][L - 1][H - 1][start: start + q + 1]]
        assert shown == pytest.approx(expected, abs=1e-12)
        # a click on the sink map picks layer 0, head 0; the readout follows
        browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))",
                               root.find_element("css selector", '.al-sinkmap rect[data-layer="0"][data-head="0"]'))
        assert (root.get_attribute("data-layer"), root.get_attribute("data-head")) == (str(d["layers"][0]), "0")
        first = float(root.find_element("css selector", ".al-readout .al-key").get_attribute("data-w"))
        assert first == pytest.approx(d["w"][0][0][start] / d["scale"], abs=1e-12)
        _shot(browser, root, f"{page}_attention")


def test_logit_lens_explorer(book, browser):
    from selenium.webdriver import ActionChains

    roots, external = _open(browser, book, "10_looking_inside", PAGES["10_looking_inside"])
    root = roots[0]
    d = _data(browser, root)
    r, s = len(d["rows"]) // 2, len(d["tokens"]) - 1
    cell = root.find_element("css selector", f'td.al-cell[data-row="{r}"][data-pos="{s}"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    ActionChains(browser).move_to_element(cell).perform()  # a real pointer move
    assert (root.get_attribute("data-row"), root.get_attribute("data-pos")) == (str(r), str(s))
    tops = root.find_elements("css selector", ".al-info .al-top")
    assert [t.get_attribute("data-token") for t in tops] == [d["vocab"][j] for j in d["top"][r][s]]
    assert [float(t.get_attribute("data-p")) for t in tops] == pytest.approx([p / d["scale"] for p in d["p"][r][s]])
    assert int(root.find_element("css selector", ".al-rank").get_attribute("data-rank")) == d["rank"][r][s]
    # the cell shows its top-1 token (cut to 9 characters, spaces as middle dots)
    text = d["vocab"][d["top"][r][s][0]].replace(" ", "\u00b7").replace("\n", "\\n")
    assert cell.text.rstrip("\u2026") == (text if len(text) <= 9 else text[:8]).strip()
    _shot(browser, root, "10_looking_inside_logit_lens")


def test_sampling_explorer_matches_the_package(book, browser):
    roots, external = _open(browser, book, "09_model_and_generation", PAGES["09_model_and_generation"])
    _check_offline("09_model_and_generation", external, roots, browser)
    root = roots[0]
    d = _data(browser, root)
    logits = torch.tensor([d["logits"]], dtype=torch.float32)  # [1, n]: exactly what the page uses
    rows = root.find_elements("css selector", ".al-token")
    assert len(rows) == len(d["logits"])
    before = [r.get_attribute("data-renorm") for r in rows]
    checked = 0
    for t, p in [(0.7, 0.8), (1.5, 0.95), (0.3, 0.5), (1.0, 0.9), (2.0, 0.99)]:
        # settings where the cut is not within float noise of a boundary (float32 package, float64 page)
        probs = torch.softmax(logits.double() / t, -1)[0]
        mass_before = probs.sort(descending=True).values.cumsum(0) - probs.sort(descending=True).values
        if (mass_before - p).abs().min() < 1e-5:
            continue
        t_page = float(_set(browser, root.find_element("css selector", "input.al-temperature"), t))
        p_page = float(_set(browser, root.find_element("css selector", "input.al-top-p"), p))
        assert (t_page, p_page) == pytest.approx((t, p))
        page = [float(r.get_attribute("data-renorm")) for r in rows]
        package = package_probabilities(logits, t_page, p_page).tolist()
        assert page == pytest.approx(package, abs=2e-6), f"T = {t}, top-p = {p}"
        kept = [r.get_attribute("data-kept") == "1" for r in rows]
        assert kept == [v > 0 for v in package]
        assert int(root.get_attribute("data-kept")) == sum(kept)
        checked += 1
    assert checked >= 3
    assert [r.get_attribute("data-renorm") for r in rows] != before  # the sliders changed what is shown
    _shot(browser, root, "09_model_and_generation_sampling")


def test_rope_explorer(book, browser):
    roots, external = _open(browser, book, "05_rope", PAGES["05_rope"])
    _check_offline("05_rope", external, roots, browser)
    root = roots[0]
    d = _data(browser, root)
    position = root.find_element("css selector", "input.al-position")
    distance = root.find_element("css selector", "input.al-distance")
    readout = root.find_element("css selector", ".al-score")
    arrow = root.find_element("css selector", ".al-pair .al-q")
    scale = float(torch.tensor(d["q"]).norm() * torch.tensor(d["k"]).norm())

    def state():
        return float(readout.get_attribute("data-score")), arrow.get_attribute("x2"), arrow.get_attribute("y2")

    _set(browser, distance, 3)
    _set(browser, position, 0)
    s0, *a0 = state()
    assert s0 == pytest.approx(explorers.rope_score(d, 3, 0), abs=1e-9 * scale)
    far = min(200, d["max_pos"] - d["max_distance"])
    _set(browser, position, far)  # both move by `far`: the arrows turn, the score stays
    s1, *a1 = state()
    assert (readout.get_attribute("data-m"), readout.get_attribute("data-n")) == (str(far + 3), str(far))
    assert a1 != a0
    assert s1 == pytest.approx(s0, abs=1e-9 * scale)
    _set(browser, distance, 7)  # another distance: another score, the reference's
    s2, *_ = state()
    assert s2 == pytest.approx(explorers.rope_score(d, far + 7, far), abs=1e-9 * scale)
    assert abs(s2 - s0) > 1e-6 * scale
    _shot(browser, root, "05_rope_rope")


def test_embedding_map_explorer(book, browser):
    roots, external = _open(browser, book, "03_embeddings", PAGES["03_embeddings"])
    _check_offline("03_embeddings", external, roots, browser)
    root = roots[0]
    d = _data(browser, root)
    labels = [x.strip() for x in d["labels"]]
    word = "France" if "France" in labels else labels[len(labels) // 2]
    box = root.find_element("css selector", "input.al-search")
    box.send_keys(word)  # typed, key by key
    i = labels.index(word)
    assert root.get_attribute("data-selected") == str(i)
    assert root.find_element("css selector", ".al-info .al-label").get_attribute("data-label") == d["labels"][i]
    shown = [int(e.get_attribute("data-index")) for e in root.find_elements("css selector", ".al-info .al-neighbour")]
    assert shown == d["nn"][i]
    _shot(browser, root, "03_embeddings_map_search")
    j = 0 if i != 0 else 1  # hover another point
    _hover(browser, root.find_element("css selector", f'circle.al-point[data-index="{j}"]'))
    assert root.get_attribute("data-selected") == str(j)
    assert root.find_element("css selector", ".al-info .al-label").get_attribute("data-label") == d["labels"][j]


def test_page_weight(book):
    """The explorers' extra bytes per page (their inline data and script) stay under 3 MB."""
    for page in PAGES:
        text = (book / "notebooks" / f"{page}.html").read_text(encoding="utf-8")
        extra = sum(len(m.group(0).encode()) for m in re.finditer(
            r'<div class="al-explorer".*?</div>\s*<script>.*?</script>', text, re.S))
        print(f"{page}: explorers add {extra / 1e6:.2f} MB to the page")
        assert 0 < extra < 3_000_000, page


def test_equations_render_offline(book, browser):
    """The prose's math is typeset with the network off: MathJax comes from the book's own static files."""
    roots, external = _open(browser, book, "05_rope", PAGES["05_rope"])
    assert not external, f"requests to the network attempted: {external[:5]}"
    typeset = browser.execute_async_script("""
        var done = arguments[arguments.length - 1], t0 = Date.now();
        (function wait() {
          var n = document.querySelectorAll('mjx-container').length;
          if (n || Date.now() - t0 > 20000) done(n); else setTimeout(wait, 100);
        })();""")
    raw = browser.execute_script("return document.body.innerText.includes('\\\\theta')")
    assert typeset > 10 and not raw, f"MathJax typeset {typeset} formulas; raw TeX left on the page: {raw}"
    root = browser.find_elements("css selector", "mjx-container")[0]
    _shot(browser, root, "math_offline")
