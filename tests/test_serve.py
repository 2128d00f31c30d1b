"""fracjax serve: the dynamic batcher, the JSON API (through an in-process
client: good, bad, mixed, oversized and concurrent requests), and the
command as a real process (a port, SIGTERM)."""

import asyncio
import base64
import io
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx", reason="the extra 'serve' (and httpx) is in the test extra")
pytest.importorskip("fastapi")

import fracjax  # noqa: E402
from fracjax.deploy.batcher import DynamicBatcher, batch_shapes, padded_size, warm_up  # noqa: E402
from fracjax.deploy.served import open_served  # noqa: E402
from fracjax.deploy.server import Limits, create_app  # noqa: E402
from fracjax.inference import Classifier  # noqa: E402
from tests.helpers import random_classifier, saved_run  # noqa: E402


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


XRAY = np.random.default_rng(3).integers(0, 256, (90, 60), dtype=np.uint8)


# -- the batcher -----------------------------------------------------------------

def test_padded_size_is_the_next_power_of_two_within_the_largest_batch():
    assert [padded_size(n, 32) for n in (1, 2, 3, 5, 8, 9, 31, 32)] == [1, 2, 4, 8, 8, 16, 32, 32]
    assert padded_size(9, 12) == 12


def test_the_warm_up_runs_every_shape_the_batcher_can_send():
    for largest in (1, 12, 32):
        padded = {padded_size(n, largest) for n in range(1, largest + 1)}
        assert set(batch_shapes(largest)) == padded
    seen = []
    assert warm_up(lambda x: seen.append(x.shape), 16, 12) == [1, 2, 4, 8, 12]
    assert seen == [(n, 16, 16, 1) for n in (1, 2, 4, 8, 12)]


def test_requests_arriving_together_run_as_one_batch_and_each_gets_its_own_result():
    shapes = []

    def run(pixels):
        shapes.append(pixels.shape[0])
        means = pixels.reshape(len(pixels), -1).mean(axis=1)
        return means / 255.0, means

    async def main():
        batcher = DynamicBatcher(run, max_batch=16, max_wait_s=0.05)
        images = [np.full((4, 4, 1), i, np.float32) for i in range(20)]
        out = await asyncio.gather(*(batcher.submit(image) for image in images))
        await batcher.stop()
        return out, batcher.batch_sizes

    out, sizes = asyncio.run(main())
    assert [logit for _, logit in out] == list(range(20))
    assert sum(sizes) == 20 and max(sizes) == 16 and len(sizes) < 20
    assert all(s in (1, 2, 4, 8, 16) for s in shapes)  # padded: few compiled shapes


def test_batches_form_greedily_a_lone_request_at_once_those_queued_meanwhile_together():
    def run(pixels):
        time.sleep(0.2)  # busy: what arrives now queues
        means = pixels.reshape(len(pixels), -1).mean(axis=1)
        return means / 255.0, means

    async def main():
        batcher = DynamicBatcher(run, max_batch=16)  # the default: no waiting for company
        started = time.perf_counter()
        first = asyncio.ensure_future(batcher.submit(np.zeros((4, 4, 1), np.float32)))
        await asyncio.sleep(0.05)  # the first is running alone by now
        rest = [batcher.submit(np.full((4, 4, 1), i, np.float32)) for i in range(1, 6)]
        out = await asyncio.gather(first, *rest)
        await batcher.stop()
        return out, batcher.batch_sizes, time.perf_counter() - started

    out, sizes, seconds = asyncio.run(main())
    assert [logit for _, logit in out] == [0, 1, 2, 3, 4, 5]
    assert sizes == [1, 5], sizes
    assert seconds < 0.9, seconds  # two model calls, no waiting between them


def test_a_model_failure_reaches_every_request_of_its_batch():
    def run(pixels):
        raise RuntimeError("device lost")

    async def main():
        batcher = DynamicBatcher(run, max_batch=4, max_wait_s=0.01)
        out = await asyncio.gather(*(batcher.submit(np.zeros((2, 2, 1))) for _ in range(3)), return_exceptions=True)
        await batcher.stop()
        return out

    assert [str(e) for e in asyncio.run(main())] == ["device lost"] * 3


# -- the API -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return saved_run(tmp_path_factory.mktemp("serve") / "run", random_classifier(seed=11, batch_size=4))


@pytest.fixture(scope="module")
def classifier(run_dir):
    return Classifier.from_checkpoint(run_dir)


@pytest.fixture(scope="module")
def app(run_dir):
    return create_app(open_served(run_dir), Limits(max_upload_bytes=4_000_000, max_pixels=1_000_000),
                      max_wait_s=0.02)


def call(app, method, path, **kwargs):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fracjax") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_a_good_image_gets_what_classifier_predict_gives(app, classifier, tmp_path):
    (tmp_path / "x.png").write_bytes(png(XRAY))
    r = call(app, "POST", "/v1/predict", files=[("files", ("x.png", png(XRAY), "image/png"))],
             data={"operating_point": "youden", "explain": "true", "preview": "true"})
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    expected = classifier.predict(str(tmp_path / "x.png"))[0]
    assert result["probability"] == pytest.approx(expected, abs=1e-5)
    assert r.json()["threshold"] == 0.42
    assert result["decision"] == ("fractured" if expected >= 0.42 else "not_fractured")
    for key in ("image", "gradcam"):
        picture = Image.open(io.BytesIO(base64.b64decode(result[key])))
        assert picture.size == (60, 90)  # the upload's own shape, not the model's 32 x 32


def test_inputs_that_are_not_radiographs_get_a_reason_no_decision_and_no_gradcam(app):
    colour = np.zeros((90, 60, 3), np.uint8)
    colour[..., 0], colour[..., 1] = 220, np.arange(60, dtype=np.uint8)[None, :] * 3  # a warm gradient: a picture
    files = [("files", ("x.png", png(XRAY), "image/png")), ("files", ("photo.png", png(colour), "image/png")),
             ("files", ("blank.png", png(np.full((90, 60), 7, np.uint8)), "image/png"))]
    r = call(app, "POST", "/v1/predict", files=files, data={"explain": "true", "preview": "true"})
    assert r.status_code == 200, r.text
    xray, photo, blank = r.json()["results"]
    assert xray["in_distribution"] is True and xray["reason"] is None and xray["decision"] and "gradcam" in xray
    for flagged, start in ((photo, "a colour picture"), (blank, "a (nearly) uniform image")):
        assert flagged["in_distribution"] is False and flagged["reason"].startswith(start)
        assert flagged["decision"] is None and "gradcam" not in flagged and "image" in flagged
        assert 0.0 <= flagged["probability"] <= 1.0
    forced = call(app, "POST", "/v1/predict", files=files[1:2], data={"force_label": "true"}).json()["results"][0]
    assert forced["decision"] in ("fractured", "not_fractured") and forced["in_distribution"] is False


def test_each_file_gets_its_own_result_or_error(app):
    truncated = png(XRAY)[:200]
    r = call(app, "POST", "/v1/predict", files=[
        ("files", ("good.png", png(XRAY), "image/png")), ("files", ("notes.txt", b"not an image", "text/plain")),
        ("files", ("cut.png", truncated, "image/png")), ("files", ("huge.png", png(np.zeros((1100, 1000), np.uint8)),
                                                                      "image/png"))])
    assert r.status_code == 200
    good, text, cut, huge = r.json()["results"]
    assert 0 <= good["probability"] <= 1
    assert text["error"]["status"] == 415 and "not a recognised image format" in text["error"]["detail"]
    assert cut["error"]["status"] == 422 and cut["file"] == "cut.png"
    assert huge["error"]["status"] == 413 and "1,100,000 pixels" in huge["error"]["detail"]


def test_a_request_whose_only_file_fails_has_that_files_status(app):
    r = call(app, "POST", "/v1/predict", files=[("files", ("a.txt", b"plain text", "text/plain"))])
    assert r.status_code == 415


@pytest.mark.parametrize("data, message", [
    ({"operating_point": "best"}, "operating_point 'best' is not one of"),
    ({"threshold": "1.5"}, r"threshold must be a probability in \[0, 1\]"),
    ({"threshold": "nan"}, "threshold must be a probability"),
    ({"threshold": "half"}, "threshold must be a number"),
    ({"threshold": "0.3", "operating_point": "youden"}, "not both"),
    ({"method": "lime"}, "method must be one of"),
])
def test_bad_options_are_refused_naming_them(app, data, message):
    r = call(app, "POST", "/v1/predict", files=[("files", ("x.png", png(XRAY), "image/png"))], data=data)
    assert r.status_code == 422 and __import__("re").search(message, r.json()["detail"])


def test_requests_without_files_or_too_large_are_refused(app):
    assert call(app, "POST", "/v1/predict", data={"explain": "true"}).status_code == 415  # a urlencoded form
    r = call(app, "POST", "/v1/predict", data={"explain": "true"}, files={"notes": ("a.txt", b"x", "text/plain")})
    assert r.status_code == 422 and r.json()["detail"].startswith("no files")
    r = call(app, "POST", "/v1/predict", json={"a": 1})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    big = np.random.default_rng(0).integers(0, 256, (1000, 1000), dtype=np.uint8)
    r = call(app, "POST", "/v1/predict", files=[("files", (f"{i}.png", png(big), "image/png")) for i in range(5)])
    assert r.status_code == 413 and "larger than 4,000,000 bytes" in r.json()["detail"]


def test_the_file_count_and_the_servers_budget_of_bytes_in_flight(run_dir):
    small = create_app(open_served(run_dir), Limits(max_upload_bytes=4_000_000, max_files=2,
                                                    max_inflight_bytes=300_000))
    one = ("files", ("x.png", png(XRAY), "image/png"))
    r = call(small, "POST", "/v1/predict", files=[one] * 3)
    assert r.status_code == 413 and r.json()["detail"] == "more than 2 files in one request"
    noise = np.random.default_rng(2).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    r = call(small, "POST", "/v1/predict", files=[("files", ("n.png", png(noise), "image/png"))])
    assert r.status_code == 503 and "as many uploads as it may at once" in r.json()["detail"]
    assert call(small, "POST", "/v1/predict", files=[one]).status_code == 200  # what was held is given back


def test_a_body_that_trickles_in_is_refused_when_its_time_is_up(run_dir):
    slow = create_app(open_served(run_dir), Limits(body_timeout_s=0.5))

    async def trickle():
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n\r\n"
        for _ in range(20):
            await asyncio.sleep(0.2)
            yield b"\x00"

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=slow), base_url="http://fracjax") as client:
            return await client.post("/v1/predict", content=trickle(),
                                     headers={"content-type": "multipart/form-data; boundary=b"})

    started = time.perf_counter()
    r = asyncio.run(go())
    assert r.status_code == 408 and "did not arrive within 0.5 s" in r.json()["detail"]
    assert time.perf_counter() - started < 2.5  # not the 4 s the client would take


def test_uploads_are_never_written_to_disk(app, monkeypatch):
    spilled = []

    def no_disk(*args, **kwargs):
        spilled.append(args)
        raise AssertionError("an upload went to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):  # where a spooled upload would go
        monkeypatch.setattr(tempfile, name, no_disk)
    noise = np.random.default_rng(1).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    assert len(png(noise)) > 1024 * 1024  # past the 1 MB at which Starlette's parser spools to disk
    r = call(app, "POST", "/v1/predict", files=[("files", ("n.png", png(noise), "image/png"))])
    assert r.status_code == 200 and spilled == []


def test_concurrent_requests_are_batched(app):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fracjax") as client:
            posts = [client.post("/v1/predict", files=[("files", ("x.png", png(XRAY), "image/png"))])
                     for _ in range(12)]
            return await asyncio.gather(*posts), (await client.get("/healthz")).json()

    responses, health = asyncio.run(go())
    probabilities = [r.json()["results"][0]["probability"] for r in responses]
    # One image, one number, whatever batch it ran in (batch sizes change XLA's float sums by ~1e-7:
    # rounding to six places split 0.0521935 once).
    assert all(r.status_code == 200 for r in responses) and max(probabilities) - min(probabilities) < 1e-5
    assert health["largest_batch"] > 1


def test_the_card_and_the_page(app):
    card = call(app, "GET", "/v1/model").json()
    assert card["model"]["model"] == "mobilenet_v3_small" and card["explain"] is True
    assert card["operating_points"]["youden"]["threshold"] == 0.42 and "not a medical device" in card["intended_use"]
    page = call(app, "GET", "/").text
    assert "<script>" in page and "http://" not in page and "https://" not in page  # no CDN: works offline
    assert call(app, "GET", "/openapi.json").json()["paths"]["/v1/predict"]


def test_the_api_docs_come_from_bundled_files_not_a_cdn(app):
    docs = call(app, "GET", "/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in docs and "/openapi.json" in docs
    assert "cdn" not in docs and "https://" not in docs  # FastAPI's default page loads jsdelivr
    script = call(app, "GET", "/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert "javascript" in script.headers["content-type"]
    assert call(app, "GET", "/docs/assets/swagger-ui.css").status_code == 200
    assert call(app, "GET", "/docs/assets/..%2F__init__.py").status_code == 404  # listed files only
    assert call(app, "GET", "/redoc").status_code == 404  # ReDoc would need a CDN too


def test_an_export_serves_what_its_checkpoint_computes_and_explains_from_it(run_dir, classifier, tmp_path):
    exported = fracjax.export(classifier, str(tmp_path / "exported"))
    served = open_served(exported)
    assert served.card["format"] == "stablehlo" and served.explainer is not None
    pixels = classifier.prepare([XRAY])
    np.testing.assert_allclose(served.run(pixels.astype(np.float32))[0], classifier.predict([XRAY]), atol=1e-5)


# -- the command -----------------------------------------------------------------------

def test_the_command_serves_and_stops_cleanly_on_sigterm(run_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "fracjax.cli", "serve", run_dir, "--port", "0", "--max-batch", "2", "--grace-s", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "this machine only" in line, line + process.stderr.read()
        assert "batch sizes 1, 2 compiled in" in line  # before it said where it listens
        url = line.split(" on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        r = httpx.post(url + "/v1/predict", files=[("files", ("x.png", png(XRAY), "image/png"))], timeout=120)
        assert r.status_code == 200
        # A client that sends its headers and then stalls: the server stops anyway, after --grace-s.
        host, port = url.removeprefix("http://").split(":")
        stalled = socket.create_connection((host, int(port)))
        stalled.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b")
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        signalled = time.perf_counter()
        out, err = process.communicate(timeout=60)
        stalled.close()
    finally:
        process.kill()
    assert process.returncode == 0, err[-2000:]
    assert "fracjax serve: stopped (SIGTERM)" in out
    assert time.perf_counter() - signalled < 15  # --grace-s 2, not the stalled client's forever


def test_the_command_refuses_a_taken_port_and_a_missing_folder(run_dir, tmp_path, capsys):
    import socket

    from fracjax.commands import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert serve.main([run_dir, "--port", str(port)]) == 2
    assert f"--host/--port: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert serve.main([str(tmp_path / "nowhere"), "--port", "0"]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.main([run_dir, "--port", "70000"])
