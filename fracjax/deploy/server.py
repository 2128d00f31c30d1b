"""The web app of ``fracjax serve``: a page at ``/`` and a JSON API.

    POST /v1/predict   multipart ``files`` (one or more); form fields
                       ``operating_point`` or ``threshold``, ``explain``
                       (a Grad-CAM overlay as base64 PNG), ``method``
                       (gradcam, gradcam++), ``preview`` (the image as PNG),
                       ``force_label`` (label inputs the checks flag too)
    GET  /v1/model     the model card
    GET  /healthz      liveness, and the batches run so far
    GET  /docs         the OpenAPI page, from Swagger UI files installed with
                       the ``serve`` extra (fastapi-offline's): it works offline

Each file gets its own result or its own error (413 too many pixels, 415 not
an image, 422 a damaged image). A result carries ``in_distribution`` and, when
the input checks (:mod:`fracjax.data.screening`) find the file outside what the
model was trained on, the ``reason``: then ``decision`` is null (unless
``force_label``) and no Grad-CAM is drawn; the response is 200 when any file was
classified, else the files' common status (422 when they differ). The whole
request is bounded (413 past ``max_upload_bytes`` or ``max_files`` files; 415
for a body that is not multipart; 408 when the body takes longer than
``body_timeout_s``) and held in memory: nothing is written to disk. All
requests together hold at most ``max_inflight_bytes`` (503 past it), and at
most ``decoders`` files are decoded at once (:class:`Limits`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.formparsers import MultiPartException, MultiPartParser

from fracjax.deploy.batcher import DynamicBatcher
from fracjax.deploy.served import ServedModel, UploadError, decode_upload, overlay_on, png_base64, preview
from fracjax.evaluation.gradcam import METHODS
from fracjax.inference import label_of
from fracjax.metrics import LABEL_NAMES
from fracjax.ood import unlike_reason

PAGE = os.path.join(os.path.dirname(__file__), "page.html")
# The files /docs needs, served from the fastapi-offline package (FastAPI's own page loads them from
# a CDN, and is blank on a machine without internet, as a hospital's server often is). Its Swagger UI
# is 5.x: it reads the OpenAPI 3.1 that FastAPI writes (swagger-ui-bundle's 4.x shows "Unable to render").
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}


@dataclasses.dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 32 * 1024 * 1024  # one request (413 past it)
    max_pixels: Optional[int] = None  # None: fracjax.data.io.pixel_limit()
    max_files: int = 64  # files in one request (413 past it)
    max_inflight_bytes: int = 256 * 1024 * 1024  # all requests' bodies held at once (503 past it)
    body_timeout_s: float = 60.0  # a request's whole body must arrive within this (408 past it)
    decoders: int = 4  # files decoded at once, across requests: decoded images are what costs memory


class TooLarge(Exception):
    pass


class Busy(Exception):
    """The uploads in flight already hold the server's budget."""


class TooSlow(Exception):
    pass


class InFlight:
    """Bytes of request bodies held by all requests at once (one event loop: no lock needed)."""

    def __init__(self, budget: int):
        self.budget, self.held = budget, 0

    def take(self, n: int, taken: List[int]) -> None:
        if self.held + n > self.budget:
            raise Busy
        self.held += n
        taken[0] += n

    def give_back(self, taken: List[int]) -> None:
        self.held -= taken[0]
        taken[0] = 0


def _in_memory_parser(limit: int):
    class InMemoryParser(MultiPartParser):
        spool_max_size = limit  # uploads stay in memory: never spooled to a temporary file
    return InMemoryParser


async def _bounded(stream, limit: int, inflight: InFlight, taken: List[int], timeout_s: float):
    """The body's chunks, refused past ``limit`` bytes, past the server's budget of bytes in flight,
    or when the whole body takes longer than ``timeout_s`` (a client sending a byte a second)."""
    loop = asyncio.get_running_loop()
    deadline, chunks, seen = loop.time() + timeout_s, stream.__aiter__(), 0
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), timeout=max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise TooSlow from None
        seen += len(chunk)
        if seen > limit:
            raise TooLarge
        inflight.take(len(chunk), taken)
        yield chunk


def _flag(value: Optional[str]) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def _number(value: Optional[str]) -> Optional[float]:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"threshold must be a number, got {value!r}") from None


def create_app(served: ServedModel, limits: Limits = Limits(), max_batch: int = 32,
               max_wait_s: float = 0.0) -> FastAPI:
    batcher = DynamicBatcher(served.run, max_batch, max_wait_s)

    async def lifespan(app):
        yield
        await batcher.stop()

    app = FastAPI(title="fracjax", description="Bone-fracture classification of X-rays (research use only)",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_offline_docs(app)
    app.state.batcher, app.state.served = batcher, served
    inflight, decoders = InFlight(limits.max_inflight_bytes), asyncio.Semaphore(limits.decoders)
    labels = served.card.get("model", {}).get("labels") or list(LABEL_NAMES)
    ood_threshold = float((served.card.get("ood") or {}).get("threshold", float("inf")))

    @app.get("/", response_class=HTMLResponse)
    def page():
        with open(PAGE, encoding="utf-8") as f:
            return f.read()

    @app.get("/healthz")
    def healthz():
        sizes = batcher.batch_sizes
        return {"status": "ok", "batches": len(sizes), "images": sum(sizes), "largest_batch": max(sizes, default=0)}

    @app.get("/v1/model")
    def model():
        return {**served.card, "explain": served.explainer is not None, "no_explanation": served.no_explanation}

    @app.post("/v1/predict")
    async def predict(request: Request):
        taken = [0]  # this request's share of the bytes in flight, given back when it is answered
        try:
            return await _answer(request, taken)
        finally:
            inflight.give_back(taken)

    async def _answer(request: Request, taken: List[int]) -> JSONResponse:
        try:
            form = await _read_form(request, limits, inflight, taken)
        except FormRefused as refused:
            return _error(refused.status, refused.detail)
        try:
            options = _options(form, served)
        except ValueError as err:
            return _error(422, str(err))
        results = await asyncio.gather(*(_one(name, data, options) for name, data in form["files"]))
        return _response(results, options)

    async def _one(name: str, data: bytes, options: Dict[str, Any]) -> Dict[str, Any]:
        try:
            async with decoders:
                grey, pixels, reason = await asyncio.to_thread(decode_upload, data, name, served.image_size,
                                                               limits.max_pixels)
        except UploadError as err:
            return {"file": name, "error": {"status": err.status, "detail": err.reason}}
        probability, logit, *score = await batcher.submit(pixels)
        ood_score = score[0] if score else None
        if reason is None and ood_score is not None and ood_score > ood_threshold:
            reason = unlike_reason(ood_score, ood_threshold)
        labelled = reason is None or options["force_label"]
        result = {"file": name, "probability": probability, "logit": logit, "in_distribution": reason is None,
                  "ood_score": ood_score, "reason": reason,
                  "decision": label_of(probability, options["threshold"], labels) if labelled else None}
        if options["preview"] or options["explain"]:
            picture = preview(grey)
            if options["preview"]:
                result["image"] = png_base64(picture)
            if options["explain"] and reason is None:  # no map over a face or a CT slice
                cam = await asyncio.to_thread(served.explain, pixels, options["method"])
                result["gradcam"] = png_base64(overlay_on(picture, cam))
        return result

    return app


def _add_offline_docs(app: FastAPI) -> None:
    import fastapi_offline  # the serve extra: Swagger UI's files in a wheel

    static = os.path.join(os.path.dirname(fastapi_offline.__file__), "static")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="fracjax API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png")

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str):
        if name not in DOCS_ASSETS:  # only the listed files: never a path into the package
            return _error(404, f"no such asset: {name!r}")
        return FileResponse(os.path.join(static, name), media_type=DOCS_ASSETS[name])


class FormRefused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


async def _read_form(request: Request, limits: Limits, inflight: InFlight, taken: List[int]) -> Dict[str, Any]:
    """The request's files and options, or FormRefused with the status that says why not."""
    too_large = FormRefused(413, f"the request is larger than {limits.max_upload_bytes:,} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes:
        raise too_large
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise FormRefused(415, f"expected multipart/form-data with image files under 'files', got "
                               f"{content_type or 'none'}")
    body = _bounded(request.stream(), limits.max_upload_bytes, inflight, taken, limits.body_timeout_s)
    parser = _in_memory_parser(limits.max_upload_bytes)(request.headers, body, max_files=limits.max_files)
    try:
        form = await parser.parse()
    except TooLarge:
        raise too_large from None
    except Busy:
        raise FormRefused(503, "the server holds as many uploads as it may at once; try again shortly") from None
    except TooSlow:
        raise FormRefused(408, f"the request body did not arrive within {limits.body_timeout_s:g} s") from None
    except MultiPartException as err:
        if "Too many files" in str(err):
            raise FormRefused(413, f"more than {limits.max_files} files in one request") from None
        raise FormRefused(422, str(err)) from None
    files: List = []
    for upload in form.getlist("files"):
        if isinstance(upload, str):
            raise FormRefused(422, "'files' must be files, not text fields")
        files.append((upload.filename or "upload", await upload.read()))
    if not files:
        raise FormRefused(422, "no files: send one or more images as multipart form field 'files'")
    options = ("operating_point", "threshold", "explain", "method", "preview", "force_label")  # fields or query
    return {"files": files, **{key: form.get(key, request.query_params.get(key)) for key in options}}


def _options(form: Dict[str, Any], served: ServedModel) -> Dict[str, Any]:
    name, threshold = served.threshold(form.get("operating_point") or None, _number(form.get("threshold")))
    method = form.get("method") or "gradcam"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    explain = _flag(form.get("explain"))
    if explain and served.explainer is None:
        raise ValueError(f"explain: no Grad-CAM for this model: {served.no_explanation}")
    return {"operating_point": name, "threshold": threshold, "method": method, "explain": explain,
            "preview": _flag(form.get("preview")), "force_label": _flag(form.get("force_label"))}


def _response(results: List[Dict[str, Any]], options: Dict[str, Any]) -> JSONResponse:
    failed = [r["error"]["status"] for r in results if "error" in r]
    status = 200 if len(failed) < len(results) else (failed[0] if len(set(failed)) == 1 else 422)
    body = {"operating_point": options["operating_point"], "threshold": options["threshold"], "results": results}
    return JSONResponse(body, status_code=status)


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)
