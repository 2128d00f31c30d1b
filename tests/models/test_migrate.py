"""Checkpoints from before ConvBN owned its BatchNorm (variables layout 1: the
BatchNorm beside the convolution) load into the current layout with their
values unchanged; a tree that fits neither is refused, naming the path."""

import chex
import jax
import numpy as np
import pytest
from flax import traverse_util

import fracjax
from fracjax.inference import Classifier
from fracjax.models import migrate
from tests.helpers import random_classifier, saved_run

CONV_BN = ("stem_conv", "expand", "project", "last_conv")  # MobileNetV3's ConvBN modules


def layout_1(variables):
    """``variables`` as fracjax wrote them before: ``.../<conv>/<bn>/x`` -> ``.../<bn>/x``."""
    out = {}
    for collection, tree in variables.items():
        flat = {}
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
            moved = len(path) >= 3 and path[-3] in CONV_BN and path[-2].endswith("_bn")
            flat[path[:-3] + path[-2:] if moved else path] = leaf
        out[collection] = traverse_util.unflatten_dict(flat)
    return out


@pytest.fixture(scope="module")
def classifier():
    return random_classifier(seed=3, batch_size=4)


def test_a_layout_1_tree_is_moved_into_the_current_one_unchanged(classifier):
    old = layout_1(classifier.variables)
    flat_old = traverse_util.flatten_dict(old["params"])
    assert ("backbone", "stem_bn", "scale") in flat_old  # the old layout really differs
    assert ("backbone", "stem_conv", "stem_bn", "scale") not in flat_old
    target = migrate.abstract_variables(classifier.model, classifier.image_size)
    chex.assert_trees_all_equal(migrate.upgrade_variables(old, target), classifier.variables)
    # The current layout passes through as it is.
    chex.assert_trees_all_equal(migrate.upgrade_variables(classifier.variables, target), classifier.variables)


def test_a_tree_of_another_model_is_refused_naming_the_path(classifier):
    target = migrate.abstract_variables(classifier.model, classifier.image_size)
    params = traverse_util.flatten_dict(dict(classifier.variables["params"]))
    missing = dict(params)
    del missing[("backbone", "last_conv", "last_bn", "scale")]
    broken = {"params": traverse_util.unflatten_dict(missing), "batch_stats": classifier.variables["batch_stats"]}
    with pytest.raises(migrate.LayoutError, match="ckpt: params/backbone/last_conv/last_bn/scale is missing"):
        migrate.upgrade_variables(broken, target, "ckpt")
    extra = dict(params)
    extra[("backbone", "spare", "kernel")] = np.zeros(3, np.float32)
    broken = {"params": traverse_util.unflatten_dict(extra), "batch_stats": classifier.variables["batch_stats"]}
    with pytest.raises(migrate.LayoutError, match="1 array.* the model does not have, the first backbone/spare"):
        migrate.upgrade_variables(broken, target, "ckpt")
    wrong = dict(params)
    wrong[("backbone", "stem_conv", "kernel")] = np.zeros((3, 3, 1, 5), np.float32)
    broken = {"params": traverse_util.unflatten_dict(wrong), "batch_stats": classifier.variables["batch_stats"]}
    with pytest.raises(migrate.LayoutError, match=r"stem_conv/kernel has shape \(3, 3, 1, 5\)"):
        migrate.upgrade_variables(broken, target, "ckpt")


def test_an_old_checkpoint_restores_to_the_same_predictions(classifier, tmp_path):
    spec = {k: v for k, v in classifier.spec.items() if k != "variables_layout"}  # as an old run saved it
    old = Classifier(spec, layout_1(classifier.variables), batch_size=4)
    old.model = None  # never applied: it would not run on the old tree
    restored = Classifier.from_checkpoint(saved_run(tmp_path / "old", old, calibration=None))
    chex.assert_trees_all_equal(restored.variables, jax.device_get(classifier.variables))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), np.uint8)
    # The same values (above); the two programs may differ in the last bit (another compile of the same model).
    np.testing.assert_allclose(restored.logits(images), classifier.logits(images), rtol=1e-5, atol=1e-5)
    assert fracjax.models.migrate.VARIABLES_LAYOUT == 2
