"""Weights by name: fetched from a local HTTP server on 127.0.0.1 standing in
for Keras's bucket, hash-checked, cached; a wrong hash and no network give
errors that say what to do."""

import functools
import http.server
import os
import shutil
import socket
import threading

import chex
import pytest

import fracjax
from fracjax.models import WeightsUnavailableError, pretrained
from fracjax.train import make_config

from .conftest import build_oracle, write_legacy_h5

NAME = "mobilenet_v3_small"
RELATIVE = pretrained.KERAS_NO_TOP[NAME][0]


@pytest.fixture(scope="module")
def legacy_file(keras, tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "small_legacy.h5"
    write_legacy_h5(build_oracle("MobileNetV3Small", 224, seed=4), path)
    return path


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1, the cache and HOME in tmp_path; yields
    (folder, hits) where hits lists the requested paths."""
    root = tmp_path / "bucket"
    root.mkdir()
    hits = []

    class Counting(_Handler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("FRACJAX_WEIGHTS_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("FRACJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no real ~/.keras/models
    try:
        yield root, hits
    finally:
        server.shutdown()
        server.server_close()


def _serve(root, source, monkeypatch, md5=None):
    target = root / RELATIVE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    monkeypatch.setitem(pretrained.KERAS_NO_TOP, NAME, (RELATIVE, md5 or pretrained.md5sum(str(source))))


def test_fetched_once_checked_cached_and_loaded(bucket, legacy_file, monkeypatch):
    root, hits = bucket
    _serve(root, legacy_file, monkeypatch)
    model, variables = fracjax.models.create(NAME, head="linear", weights="imagenet")
    assert hits == ["/" + RELATIVE]
    cached = pretrained.weights_path(NAME)
    assert cached == os.path.join(pretrained.cache_dir(), os.path.basename(RELATIVE))
    assert len(hits) == 1  # the second ask is answered from the cache
    expected = fracjax.models.load_keras_weights(NAME, str(legacy_file))
    chex.assert_trees_all_equal(variables["params"]["backbone"], expected["params"])
    chex.assert_trees_all_equal(variables["batch_stats"]["backbone"], expected["batch_stats"])
    assert set(variables["params"]) == {"backbone", "head"}
    # timm's spelling and the loader's name give the same weights.
    _, again = fracjax.models.create(NAME, head="linear", pretrained=True)
    chex.assert_trees_all_equal(again, variables)
    by_name = fracjax.models.load_keras_weights(NAME, "imagenet")
    chex.assert_trees_all_equal(by_name, expected)
    assert len(hits) == 1


def test_a_wrong_hash_is_refused_and_not_kept(bucket, legacy_file, monkeypatch):
    root, hits = bucket
    _serve(root, legacy_file, monkeypatch, md5="0" * 32)
    with pytest.raises(WeightsUnavailableError, match="MD5 .* expected 0{32}"):
        pretrained.weights_path(NAME)
    assert hits and os.listdir(pretrained.cache_dir()) == []  # no file, no partial download


def test_offline_says_which_file_to_put_where(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FRACJAX_WEIGHTS_URL", f"http://127.0.0.1:{port}/")
    monkeypatch.setenv("FRACJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(WeightsUnavailableError) as err:
        pretrained.weights_path(NAME, timeout=5)
    message = str(err.value)
    assert f"http://127.0.0.1:{port}/{RELATIVE}" in message
    assert os.path.join(str(tmp_path / "cache"), "weights", os.path.basename(RELATIVE)) in message
    with pytest.raises(WeightsUnavailableError, match="no ImageNet weights are known for 'unknown'"):
        pretrained.weights_path("unknown")


def test_keras_cache_is_used_without_network(tmp_path, legacy_file, monkeypatch):
    monkeypatch.setenv("FRACJAX_WEIGHTS_URL", "http://127.0.0.1:9/")  # never asked
    monkeypatch.setenv("FRACJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    keras_cache = tmp_path / "home" / ".keras" / "models"
    keras_cache.mkdir(parents=True)
    shutil.copy(legacy_file, keras_cache / os.path.basename(RELATIVE))
    monkeypatch.setitem(pretrained.KERAS_NO_TOP, NAME, (RELATIVE, pretrained.md5sum(str(legacy_file))))
    assert pretrained.weights_path(NAME, download=False) == str(keras_cache / os.path.basename(RELATIVE))


def test_train_config_takes_the_name():
    assert make_config(pretrained="imagenet").validate().model.pretrained == "imagenet"
    with pytest.raises(ValueError, match="--pretrained: no such file: nope.h5 \\(or 'imagenet'"):
        make_config(pretrained="nope.h5").validate()
