"""fracjax's TFDS builders, one module per data set on the public base
:mod:`fracjax.data.builders.base`. Importing this package registers them all:

* ``synthetic_fracture`` (:mod:`.generated`): generated, needs no files; the main job's default;
* ``fracture_xray`` (:mod:`.kaggle`): the Kaggle download, as published or re-split by group;
* ``fracatlas`` (:mod:`.fracatlas`) and ``mura`` (:mod:`.mura`): the public sets, patient-aware;
* ``image_folder`` (:mod:`.image_folder`): a user's folder or CSV (``fracjax.data.from_folder``).

The real sets are read from the folder the user downloaded (TFDS ``manual_dir``).
"""

from fracjax.data.builders import fracatlas, generated, image_folder, kaggle, mura  # noqa: F401  (registers them)
from fracjax.data.builders.base import (  # noqa: F401
    MANUAL_SETS,
    NEGATIVE_NAMES,
    POSITIVE_NAMES,
    DecodedThenSplit,
    Record,
    class_label,
    find_split_root,
)
from fracjax.data.builders.fracatlas import FracAtlas, FracAtlasConfig  # noqa: F401
from fracjax.data.builders.generated import SyntheticFracture, SyntheticFractureConfig  # noqa: F401
from fracjax.data.builders.image_folder import ImageFolder, ImageFolderConfig  # noqa: F401
from fracjax.data.builders.kaggle import FractureXray, FractureXrayConfig  # noqa: F401
from fracjax.data.builders.mura import Mura, MuraConfig  # noqa: F401
