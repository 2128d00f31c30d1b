"""The paper's baselines (ResNet50, VGG16, DenseNet121) and their families
against keras.applications, with random weights and randomised BN statistics.

Keras's ResNet/VGG/DenseNet applications do not preprocess inside the model;
ours do (same input contract as MobileNetV3), so the oracle is
``keras_model(keras_preprocess_input(x))``.
"""

import chex
import jax
import numpy as np
import pytest

import fracjax
from fracjax.train import optim
from tests.helpers import random_variables

from .conftest import build_oracle, keras_forward, write_legacy_h5

# name -> (Keras application, Keras preprocess module)
BASELINES = {
    "resnet50": ("ResNet50", "resnet"),
    "vgg16": ("VGG16", "vgg16"),
    "densenet121": ("DenseNet121", "densenet"),
}
FAMILY = {
    "resnet101": ("ResNet101", "resnet"),
    "resnet152": ("ResNet152", "resnet"),
    "vgg19": ("VGG19", "vgg19"),
    "densenet169": ("DenseNet169", "densenet"),
    "densenet201": ("DenseNet201", "densenet"),
}
OTHER_SIZE = 112


def relative_error(a, b) -> float:
    b = np.asarray(b)
    assert np.max(np.abs(b)) > 0, "the oracle's output is all zeros: the comparison would prove nothing"
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def keras_reference(keras, oracle, family_module, x):
    preprocess = getattr(keras.applications, family_module).preprocess_input
    return keras_forward(oracle, preprocess(np.array(x, copy=True)))


class Oracle:
    """One Keras model per size (sharing weights), its weight files in both
    formats, and one jitted fracjax forward, built once per model."""

    def __init__(self, keras, name, sizes, seed, tmp):
        application, self.family = BASELINES.get(name) or FAMILY[name]
        self.models = {}
        for size in sizes:
            self.models[size] = build_oracle(application, size, seed=seed)
            if size != sizes[0]:
                self.models[size].set_weights(self.models[sizes[0]].get_weights())
        reference = self.models[sizes[0]]
        self.files = {"keras3": tmp / f"{name}.weights.h5", "legacy": tmp / f"{name}_notop.h5"}
        reference.save_weights(self.files["keras3"])
        write_legacy_h5(reference, self.files["legacy"])
        self.keras_params = reference.count_params()
        self.apply = jax.jit(fracjax.models.create(name, head=None).apply)


@pytest.fixture(scope="module")
def oracles(keras, tmp_path_factory):
    built = {}

    def get(name, sizes=(224, OTHER_SIZE)):
        if name not in built:
            built[name] = Oracle(keras, name, sizes, seed=len(built) + 11, tmp=tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_legacy_writer_is_what_keras_loads(oracles, keras, name):
    # The legacy test file must be one Keras itself accepts, or its test proves nothing.
    oracle = oracles(name)
    other = build_oracle(BASELINES[name][0], 224, seed=99)
    other.load_weights(oracle.files["legacy"])
    for a, b in zip(other.get_weights(), oracle.models[224].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fmt", ["keras3", "legacy"])
@pytest.mark.parametrize("size", [224, OTHER_SIZE])
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_parity_with_keras(oracles, keras, name, size, fmt):
    oracle = oracles(name)
    variables = fracjax.models.load_keras_weights(name, oracle.files[fmt])
    assert count(variables) == oracle.keras_params
    x = np.random.default_rng(size).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    expected = keras_reference(keras, oracle.models[size], oracle.family, x)
    with jax.default_matmul_precision("highest"):
        got = oracle.apply(variables, x)
    chex.assert_shape(got, expected.shape)
    chex.assert_tree_all_finite(got)
    assert relative_error(got, expected) <= 1e-4


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_parity_with_keras(oracles, keras, name):
    # One small size keeps the deep members cheap; the layer tables are what
    # differ from the tested baselines, and every weight must land.
    oracle = oracles(name, sizes=(96,))
    variables = fracjax.models.load_keras_weights(name, oracle.files["keras3"], image_size=96)
    assert count(variables) == oracle.keras_params
    x = np.random.default_rng(1).uniform(0, 255, (1, 96, 96, 3)).astype(np.float32)
    expected = keras_reference(keras, oracle.models[96], oracle.family, x)
    with jax.default_matmul_precision("highest"):
        got = oracle.apply(variables, x)
    assert relative_error(got, expected) <= 1e-4


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_grey_input_is_repeated_to_rgb(name):
    # (DenseNet shares the same preprocess_input; test_layers checks every mode.)
    model = fracjax.models.create(name, head=None)
    grey = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 1)).astype(np.float32)
    variables = random_variables(model, 32, seed=0)
    apply = jax.jit(model.apply)
    chex.assert_trees_all_close(apply(variables, grey), apply(variables, np.repeat(grey, 3, axis=-1)), rtol=1e-6)


@pytest.mark.parametrize("head", ["hybrid", "linear"])
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_heads_and_phase_groups(name, head):
    model = fracjax.models.create(name, head=head)
    x = jax.ShapeDtypeStruct((2, 64, 64, 1), np.float32)
    variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x), x)
    logits = jax.eval_shape(model.apply, variables, x)
    chex.assert_shape(logits, (2, 1))
    groups = optim.backbone_groups(variables["params"]["backbone"])
    # Every backbone module is in exactly one group, stem first.
    flat = [m for g in groups for m in g]
    assert sorted(flat) == sorted(variables["params"]["backbone"]) and len(flat) == len(set(flat))
    mask = optim.trainable_mask(variables["params"], 2, unfreeze=1)
    trainable = {k for k, v in mask["backbone"].items() if set(jax.tree_util.tree_leaves(v)) == {True}}
    assert trainable == set(groups[-1])


def test_densenet_groups_keep_transitions_after_their_block():
    model = fracjax.models.create("densenet121", head=None)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
    order = [g[0] for g in optim.backbone_groups(params)]
    assert order.index("transition1") == order.index("block1_6") + 1
    assert order.index("block2_1") == order.index("transition1") + 1
    assert order[-1] == "last_bn" and order[0] == "stem_bn"


def test_wrong_architecture_file_is_a_hard_error(oracles):
    with pytest.raises(fracjax.models.KerasWeightsError):
        fracjax.models.load_keras_weights("resnet50", oracles("vgg16").files["keras3"])
    with pytest.raises(fracjax.models.KerasWeightsError):
        fracjax.models.load_keras_weights("densenet121", oracles("resnet50").files["legacy"])
