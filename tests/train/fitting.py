"""What the training tests share: runs' flags and their latest variables (the tiny data set
they train on is the fixture ``data_dir`` of conftest.py)."""

from fracjax import checkpoint as ckpt


def flags(data_dir, out, name, *extra):
    return [
        "--dataset", "synthetic_fracture/tiny", "--data-dir", data_dir, "--out", str(out), "--name", name,
        "--image-size", "32", "--batch-size", "16", "--train-examples", "64",
        "--phase1-epochs", "1", "--phase2-epochs", "2", "--no-progress", "--seed", "3", *extra,
    ]


def config(data_dir, out, name, **overrides):
    from fracjax.train.cli import config_from_args

    return config_from_args(flags(data_dir, out, name)).replace(**overrides)


def latest_variables(run_dir):
    folder, step = ckpt.find_model_checkpoint(run_dir, "latest")
    variables, meta = ckpt.restore_model(folder, step)
    return step, variables
