"""ImageNet weights by name: the exact files ``keras.applications`` uses
(``include_top=False``), fetched only when asked for, checked against Keras's
MD5 hash and cached.

    path = fracjax.models.pretrained.weights_path("mobilenet_v3_small")   # downloads once
    backbone = fracjax.models.load_keras_weights("mobilenet_v3_small", "imagenet")

Where files are looked for, in order: the fracjax cache (``$FRACJAX_CACHE``,
default ``~/.cache/fracjax``, under ``weights/``), then Keras's own cache
(``~/.keras/models``, where ``keras.applications`` left them), then the
network (``$FRACJAX_WEIGHTS_URL``, default Keras's storage bucket). Offline,
the error says which file to put where.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from typing import Dict, Optional, Tuple

from fracjax.caches import cache_root
from fracjax.hashing import file_digest

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

# Model name -> (path under the base URL, MD5 of the file), as keras.applications 3.x has them.
KERAS_NO_TOP: Dict[str, Tuple[str, str]] = {
    "mobilenet_v3_small": ("mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                           "d3e8ec802a04aa4fc771ee12a9a9b836"),
    "mobilenet_v3_large": ("mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
                           "07fb09a5933dd0c8eaafa16978110389"),
    "resnet50": ("resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("resnet/resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "vgg16": ("vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
    "vgg19": ("vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
    "densenet121": ("densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    "30ee3e1110167f948a6b9946edeeb738"),
    "densenet169": ("densenet/densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    "b8c4d4c20dd625c148057b9ff1c1176b"),
    "densenet201": ("densenet/densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    "c13680b51ded0fb44dff2d8f86ac8bb1"),
}

WEIGHT_NAMES = ("imagenet",)


class WeightsUnavailableError(OSError):
    """Named weights that could not be had: no network, a bad hash, no such name."""


def cache_dir() -> str:
    return os.path.join(cache_root(), "weights")


def base_url() -> str:
    url = os.environ.get("FRACJAX_WEIGHTS_URL", KERAS_BASE_URL)
    return url if url.endswith("/") else url + "/"


def _entry(model: str) -> Tuple[str, str]:
    if model not in KERAS_NO_TOP:
        raise WeightsUnavailableError(f"no ImageNet weights are known for {model!r}; models with them: "
                                      f"{', '.join(sorted(KERAS_NO_TOP))}")
    return KERAS_NO_TOP[model]


def md5sum(path: str) -> str:
    return file_digest(path, "md5")


def _verified(path: str, expected: str) -> bool:
    return os.path.isfile(path) and md5sum(path) == expected


def weights_path(model: str, download: bool = True, timeout: float = 60.0) -> str:
    """The local path of ``model``'s ImageNet weights (Keras, no top),
    downloading them into the cache if needed and allowed."""
    relative, expected = _entry(model)
    file_name = os.path.basename(relative)
    cached = os.path.join(cache_dir(), file_name)
    for candidate in (cached, os.path.join(os.path.expanduser("~/.keras/models"), file_name)):
        if _verified(candidate, expected):
            return candidate
    if not download:
        raise WeightsUnavailableError(_offline_message(model, cached, base_url() + relative, "downloads are off"))
    return _download(base_url() + relative, cached, expected, model, timeout)


def _offline_message(model: str, cached: str, url: str, reason: str) -> str:
    return (f"ImageNet weights for {model} are not cached and could not be fetched ({reason}). Download {url} "
            f"on a machine with network access and put it at {cached} (or set FRACJAX_CACHE), or pass the "
            "file's path instead of 'imagenet'.")


def _download(url: str, destination: str, expected: str, model: str, timeout: float) -> str:
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    # A temporary file in the same folder, renamed when complete and checked:
    # an interrupted or corrupted download never sits at the final path.
    handle, partial = tempfile.mkstemp(prefix=".download-", dir=os.path.dirname(destination))
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        actual = md5sum(partial)
        if actual != expected:
            raise WeightsUnavailableError(
                f"{url}: downloaded file has MD5 {actual}, expected {expected}; it was not kept (a truncated "
                "download, a proxy's error page, or a changed file)")
        os.replace(partial, destination)
    except (urllib.error.URLError, OSError) as err:
        if isinstance(err, WeightsUnavailableError):
            raise
        raise WeightsUnavailableError(_offline_message(model, destination, url, str(err))) from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return destination


def resolve(model: str, weights: Optional[str]) -> Optional[str]:
    """A weights argument -> a file path: a name from ``WEIGHT_NAMES`` is
    fetched (or found in the cache); anything else is taken as a path."""
    if weights is None:
        return None
    if weights in WEIGHT_NAMES:
        return weights_path(model)
    return os.fspath(weights)
