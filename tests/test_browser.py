"""The page of ``fracjax serve`` in a real browser: headless Chromium, driven
by Selenium, uploads a 16-bit X-ray and reads the probability, the decision
at an operating point and the Grad-CAM overlay from the page.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them
and sets ``FRACJAX_REQUIRE_BROWSER=1``, so that in CI a missing browser is a
failure, not a skip)."""

import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from fracjax.inference import Classifier
from tests.helpers import random_classifier, saved_run

CHROMIUM, DRIVER = (
    shutil.which("chromium") or "/usr/bin/chromium",
    shutil.which("chromedriver") or "/usr/bin/chromedriver",
)


def _browser_or_skip():
    missing = [what for what, ok in (("chromium", os.path.exists(CHROMIUM)), ("chromedriver", os.path.exists(DRIVER)))
               if not ok]
    try:
        import selenium  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        missing.append(str(err))
    if missing:
        if os.environ.get("FRACJAX_REQUIRE_BROWSER"):
            pytest.fail(f"the browser test needs {missing} (apt-get install chromium chromium-driver)")
        pytest.skip(f"no browser here: {missing} (FRACJAX_REQUIRE_BROWSER=1 makes this a failure)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _browser_or_skip()
    import uvicorn

    from fracjax.deploy.served import open_served
    from fracjax.deploy.server import create_app

    run_dir = saved_run(tmp_path_factory.mktemp("browser") / "run", random_classifier(seed=21, batch_size=4))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(create_app(open_served(run_dir)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/", run_dir
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_classifies_an_uploaded_xray_as_predict_does(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, run_dir = server
    xray = (np.random.default_rng(4).integers(0, 4096, (70, 50)) * 16).astype(np.uint16)  # 12 bits in 16
    path = str(tmp_path / "wrist.png")
    Image.fromarray(xray).save(path)
    expected = Classifier.from_checkpoint(run_dir).predict(path)[0]

    browser.get(url)
    wait = WebDriverWait(browser, 120)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "not a medical device" in browser.find_element(By.ID, "intended").text
    browser.find_element(By.ID, "files").send_keys(path)
    shown = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result .probability"))[0]
    assert float(shown.get_attribute("data-probability")) == pytest.approx(expected, abs=1e-6)
    assert f"{expected:.4f}" in shown.text

    decision = browser.find_element(By.CSS_SELECTOR, ".result .decision")
    for point, threshold in (("sensitivity_0.95", 0.2), ("youden", 0.42)):
        Select(browser.find_element(By.ID, "point")).select_by_value(point)
        assert decision.text == ("fractured" if expected >= threshold else "not_fractured")

    image = browser.find_element(By.CSS_SELECTOR, ".result img")
    plain = image.get_attribute("src")
    browser.find_element(By.ID, "overlay").click()
    assert image.get_attribute("src") != plain and image.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 50


def test_the_page_says_a_photograph_is_outside_what_the_model_was_trained_on(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, _ = server
    photo = np.zeros((60, 80, 3), np.uint8)
    photo[..., 0], photo[..., 2] = 230, np.arange(80, dtype=np.uint8)[None, :] * 3
    path = str(tmp_path / "portrait.png")
    Image.fromarray(photo).save(path)
    browser.get(url)
    wait = WebDriverWait(browser, 120)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    browser.find_element(By.ID, "files").send_keys(path)
    decision = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result .decision"))[0]
    assert decision.text.startswith("outside what this model was trained on: a colour picture")
    Select(browser.find_element(By.ID, "point")).select_by_value("youden")  # no threshold gives it a label
    assert decision.text.startswith("outside what this model was trained on")
    assert "fractured" not in decision.text


def test_the_api_docs_render_without_the_internet(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    browser.get(url + "docs")
    paths = WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    assert "/v1/predict" in {p.get_attribute("data-path") for p in paths}
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(url) for name in loaded), loaded  # every file from this server
