"""Fixtures of the training tests."""

import pytest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    import tensorflow_datasets as tfds

    import fracjax.data.builders  # noqa: F401  (registers the builders)

    d = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("synthetic_fracture/tiny", data_dir=d).download_and_prepare()
    return d
