import math

import numpy as np
import pytest

from fracjax.data import builders, pipeline, prepare


def array_source(n=37, size=4):
    images = (np.arange(n)[:, None, None, None] % 256 * np.ones((1, size, size, 1))).astype(np.uint8)
    return pipeline.ArraySource(images, np.arange(n) % 2)


def test_eval_sees_every_example_once():
    source = array_source(37)
    for count in (1, 3):
        seen = []
        lengths = set()
        for p in range(count):
            batches = list(pipeline.eval_batches(source, 8, process_index=p, process_count=count))
            lengths.add(len(batches))
            for b in batches:
                assert b["image"].shape == (8, 4, 4, 1)
                seen.extend(b["index"][b["mask"]].tolist())
                # The image really is that example.
                np.testing.assert_array_equal(b["image"][b["mask"]][:, 0, 0, 0], b["index"][b["mask"]] % 256)
        assert sorted(seen) == list(range(37))
        assert len(lengths) == 1  # every process runs the same number of batches
        # ceil(ceil(37 / count) / 8): each process's share of the examples, in batches of 8.
        assert lengths.pop() == math.ceil(math.ceil(37 / count) / 8)


def collect(source, order, start, steps, **kw):
    return [b["index"] for b in pipeline.train_batches(source, order, start_step=start, num_steps=steps, **kw)]


def test_same_seed_same_order_and_epochs_differ():
    source = array_source(40)
    order = pipeline.TrainOrder(40, 8, seed=1)
    a = collect(source, order, 0, 10)
    b = collect(source, pipeline.TrainOrder(40, 8, seed=1), 0, 10, threads=0)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    c = collect(source, pipeline.TrainOrder(40, 8, seed=2), 0, 10)
    assert not np.array_equal(np.stack(a), np.stack(c))
    epoch0, epoch1 = np.concatenate(a[:5]), np.concatenate(a[5:])
    assert sorted(epoch0) == list(range(40)) and sorted(epoch1) == list(range(40))
    assert not np.array_equal(epoch0, epoch1)


def test_resume_mid_epoch_continues_the_same_order():
    source = array_source(37)  # 37 // 8 = 4 steps an epoch, remainder dropped
    order = pipeline.TrainOrder(37, 8, seed=5)
    full = collect(source, order, 0, 11)
    resumed = collect(source, order, 6, 5)
    np.testing.assert_array_equal(np.stack(full[6:]), np.stack(resumed))
    # Default length: to the end of the current epoch.
    assert len(collect(source, order, 6, None)) == 2
    assert all(len(set(np.concatenate(full[e * 4 : e * 4 + 4]))) == 32 for e in range(2))


def test_processes_split_each_global_batch():
    source = array_source(48)
    single = collect(source, pipeline.TrainOrder(48, 12, seed=0), 0, 8)
    parts = [
        collect(source, pipeline.TrainOrder(48, 12, seed=0, process_index=p, process_count=3), 0, 8) for p in range(3)
    ]
    for step in range(8):
        np.testing.assert_array_equal(np.concatenate([parts[p][step] for p in range(3)]), single[step])


def test_order_validation():
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.TrainOrder(100, 10, seed=0, process_count=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        pipeline.TrainOrder(5, 8, seed=0)


def test_tfds_source_and_memory_agree(tmp_path):
    config = builders.SyntheticFractureConfig(name="pipe", image_size=32, num_train=20, num_validation=6, num_test=6)
    builder = builders.SyntheticFracture(config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    source = builder.as_data_source()["validation"]
    memory = pipeline.load_arrays(source)
    assert memory.images.shape == (6, 32, 32, 1)
    for disk_batch, mem_batch in zip(
        pipeline.eval_batches(source, 4, 0, 1), pipeline.eval_batches(memory, 4, 0, 1), strict=True
    ):
        for key in ("image", "label", "index", "mask"):
            np.testing.assert_array_equal(disk_batch[key], mem_batch[key])
    order = pipeline.TrainOrder(20, 4, seed=3)
    disk = list(pipeline.train_batches(builder.as_data_source()["train"], order, 0, 5))
    mem = list(pipeline.train_batches(pipeline.load_arrays(builder.as_data_source()["train"]), order, 0, 5))
    for a, b in zip(disk, mem, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_missing_prepared_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="synthetic_fracture.*not prepared"):
        prepare.load_source("synthetic_fracture", "train", data_dir=str(tmp_path))
