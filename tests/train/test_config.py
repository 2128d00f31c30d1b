"""The run configuration: one declaration per option gives the dataclass field, the
command line, its help and the checks."""

import dataclasses
import subprocess
import sys

import pytest

from fracjax.train import TrainConfig, make_config
from fracjax.train.cli import build_parser, config_from_args
from fracjax.train.config import fields, flag_of
from fracjax.train.context import _write_config


def test_the_command_line_defaults_are_the_config_defaults():
    assert config_from_args([]) == TrainConfig()


def test_every_option_is_on_the_command_line_once():
    parser_flags = [s for a in build_parser()._actions for s in a.option_strings if s not in ("-h", "--help")]
    assert len(parser_flags) == len(set(parser_flags))
    for _, f, name in fields():
        if not f.metadata["cli"]:
            continue
        flag = flag_of(f, name)
        assert flag in parser_flags or flag.replace("--", "--no-", 1) in parser_flags, flag


def test_help_shows_real_defaults_and_the_program_name(capsys):
    with pytest.raises(SystemExit):
        build_parser("python -m fracjax.train").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m fracjax.train")
    for wrong in ("(default: None)", "(default: True)", "(default: False)", "(default: None) (default"):
        assert wrong not in text
    for right in ("--batch-size BATCH_SIZE global batch size (default: 32)", "--no-augment no flip/rotation",
                  "--backbone-bn {auto,train,inference}", "(default: auto)", "--resume continue the run",
                  "--image-size IMAGE_SIZE train at this size (default: the data set's stored size)"):
        assert right in text, right


def test_python_m_fracjax_train_names_itself():
    out = subprocess.run([sys.executable, "-m", "fracjax.train", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m fracjax.train")


def test_command_line_values_land_in_their_sections():
    config = config_from_args(["--model", "resnet50", "--name", "r", "--batch-size", "8", "--unfreeze", "3",
                               "--backbone-bn", "inference", "--class-weights", "1", "2.5", "--no-augment",
                               "--resume", "--threshold", "0.3", "--dtype", "bfloat16"])
    assert config == make_config(model="resnet50", name="r", batch_size=8, unfreeze=3, backbone_bn_train=False,
                                 class_weights=(1.0, 2.5), augment=False, resume=True, threshold=0.3,
                                 dtype="bfloat16")
    assert (config.model.name, config.run.name, config.optim.batch_size, config.data.augment) == (
        "resnet50", "r", 8, False)
    assert config.run_dir.endswith("r") and not config.backbone_bn_trains


@pytest.mark.parametrize(
    "option,value,flag",
    [
        ("batch_size", 0, "--batch-size"),
        ("model", "alexnet", "--model"),
        ("head", "mlp", "--head"),
        ("image_size", 16, "--image-size"),
        ("lr", 0.0, "--lr"),
        ("phase2_lr", -1.0, "--phase2-lr"),
        ("weight_decay", -1e-4, "--weight-decay"),
        ("schedule", "step", "--schedule"),
        ("unfreeze", "3", "--unfreeze"),
        ("unfreeze", -1, "--unfreeze"),
        ("parallel", "shard", "--parallel"),
        ("dtype", "float16", "--dtype"),
        ("label_smoothing", 1.0, "--label-smoothing"),
        ("class_weights", (1.0, 0.0), "--class-weights"),
        ("threshold", 1.0, "--threshold"),
        ("rotation", 1.5, "--rotation"),
        ("grad_clip", 0.0, "--grad-clip"),
        ("backbone_bn_momentum", 1.0, "--backbone-bn-momentum"),
        ("audit", "nowhere.json", "--audit"),
        ("bootstrap", -1, "--bootstrap"),
        ("train_minutes", float("inf"), "--train-minutes"),
        ("early_stopping_patience", 0, "--early-stopping-patience"),
        ("pretrained", "nope.h5", "--pretrained"),
        ("phase1_epochs", 0, "--phase1-epochs"),
        ("train_examples", 4, "--train-examples"),
        ("max_steps", 0, "--max-steps"),
        ("eval_batch_size", 0, "--eval-batch-size"),
        # Non-finite numbers, out-of-range seeds and wrong types (issue 18).
        ("lr", float("inf"), "--lr"),
        ("phase2_lr", float("nan"), "--phase2-lr"),
        ("weight_decay", float("inf"), "--weight-decay"),
        ("weight_decay", float("nan"), "--weight-decay"),
        ("class_weights", (float("nan"), 1.0), "--class-weights"),
        ("class_weights", (1.0, float("inf")), "--class-weights"),
        ("warmup_epochs", float("inf"), "--warmup-epochs"),
        ("plateau_factor", 5.0, "--plateau-factor"),
        ("label_smoothing", float("nan"), "--label-smoothing"),
        ("threshold", float("nan"), "--threshold"),
        ("seed", -5, "--seed"),
        ("seed", 10**23, "--seed"),
        ("seed", 1.5, "--seed"),
        ("image_size", 64.5, "--image-size"),
        ("batch_size", True, "--batch-size"),
        ("lr", "1e-3", "--lr"),
        ("augment", 0, "--augment"),
        # Upper bounds of size-like options (issue 35): a 37 GiB allocation was accepted.
        ("image_size", 100_000, "--image-size"),
        ("bootstrap", 10**9, "--bootstrap"),
        ("batch_size", 10**6, "--batch-size"),
        ("eval_batch_size", 10**6, "--eval-batch-size"),
        ("phase2_epochs", 10**7, "--phase2-epochs"),
        ("lr", 10**400, "--lr"),
        # Several processes (issue 21).
        ("coordinator", "localhost", "--coordinator"),
        ("coordinator", "host:99999", "--coordinator"),
        ("heartbeat_timeout", 1, "--heartbeat-timeout"),
        ("num_processes", 0, "--num-processes"),
        # Your own data (issue 20): a missing folder or CSV is named before any work.
        ("data_folder", "/nowhere/xrays", "--data-folder"),
        ("data_csv", "/nowhere/labels.csv", "--data-csv"),
    ],
)
def test_a_bad_value_is_refused_naming_its_flag_and_nothing_changes(option, value, flag):
    options = {option: value}
    if option == "phase1_epochs":
        options["phase2_epochs"] = 0
    config = make_config(**options)
    before = dataclasses.asdict(config)
    with pytest.raises(ValueError, match=f"^{flag}: "):
        config.validate()
    assert dataclasses.asdict(config) == before


def test_the_seed_range_ends_are_accepted():
    make_config(seed=0).validate()
    make_config(seed=2**32 - 1).validate()


def test_a_non_finite_value_on_the_command_line_is_refused_before_any_work(capsys):
    from fracjax.train import cli

    with pytest.raises(ValueError, match="^--lr: must be finite, got inf"):
        cli.config_from_args(["--lr", "inf"]).validate()
    with pytest.raises(SystemExit):  # argparse names the flag: --seed takes integers
        cli.config_from_args(["--seed", "1e23"])
    assert "--seed" in capsys.readouterr().err


def test_validation_passes_the_defaults_and_changes_nothing():
    config = make_config(unfreeze=2, class_weights=(1.0, 3.0))
    assert config.validate() is config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.batch_size = 3


def test_unknown_options_are_named():
    with pytest.raises(ValueError, match="unknown config option 'batchsize'"):
        make_config(batchsize=8)
    with pytest.raises(ValueError, match="unknown OptimConfig field"):
        TrainConfig.from_dict({"optim": {"batchsize": 8}})


def test_dict_round_trips_nested_and_flat():
    config = make_config(model="vgg16", image_size=64, class_weights=(1.0, 2.0), name="v", unfreeze=1)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict(config.flat()) == config  # the flat config.json of earlier runs
    assert config.flat()["model"] == "vgg16" and config.flat()["name"] == "v"


def test_own_data_replaces_dataset_and_one_source_only(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match="^--data-csv: replaces --dataset"):
        make_config(data_csv=str(tmp_path / "labels.csv"), dataset="fracture_xray").validate()
    with pytest.raises(ValueError, match="^--data-csv: give --data-folder or --data-csv, not both"):
        make_config(data_csv=str(tmp_path / "labels.csv"), data_folder=str(tmp_path)).validate()
    make_config(data_folder=str(tmp_path)).validate()


@pytest.mark.parametrize("options, message", [
    ({"coordinator": "127.0.0.1:1234"}, "^--num-processes: --coordinator, --num-processes and --process-id go "
                                        "together; missing --num-processes, --process-id"),
    ({"coordinator": "127.0.0.1:1234", "num_processes": 2, "process_id": 2}, "^--process-id: must be below"),
    ({"coordinator": "127.0.0.1:1234", "num_processes": 2, "process_id": 0, "parallel": "pmap"},
     "^--parallel: pmap runs in one process"),
    ({"coordinator": "127.0.0.1:1234", "num_processes": 2, "process_id": 0, "distributed": True},
     "^--distributed: detects the coordinator"),
])
def test_several_process_options_are_checked_together(options, message):
    with pytest.raises(ValueError, match=message):
        make_config(**options).validate()
    make_config(coordinator="10.0.0.1:8476", num_processes=4, process_id=3).validate()


def test_resume_alone_takes_the_runs_saved_options(tmp_path, capsys):
    original = make_config(out=str(tmp_path), image_size=64, phase2_epochs=2, batch_size=16, seed=7,
                           dataset="synthetic_fracture/tiny")
    _write_config(original, {"model": "mobilenet_v3_small"})  # as fit writes it
    resumed = config_from_args(["--resume", "--out", str(tmp_path)])
    assert resumed.run.resume and resumed.resume_keys() == original.resume_keys()
    assert "the run's own model, data and schedule options" in capsys.readouterr().out
    # What is given on the command line still counts (and the resume check then judges it).
    changed = config_from_args(["--resume", "--out", str(tmp_path), "--phase2-epochs", "4"])
    assert changed.optim.phase2_epochs == 4 and changed.data.image_size == 64
    # No saved options: the command line as it is.
    fresh = config_from_args(["--resume", "--out", str(tmp_path / "elsewhere")])
    assert fresh.data.image_size == make_config().data.image_size


def test_the_quick_preset_and_the_options_given_beside_it():
    quick = config_from_args(["--quick"])
    assert (quick.data.dataset, quick.optim.phase1_epochs, quick.run.name) == ("synthetic_fracture/quick", 0, "quick")
    assert quick == make_config("quick")
    mine = config_from_args(["--quick", "--phase2-epochs", "3", "--name", "mine"])
    assert (mine.optim.phase2_epochs, mine.run.name, mine.data.dataset) == (3, "mine", "synthetic_fracture/quick")
    assert make_config("quick", phase2_epochs=3, name="mine") == mine
    with pytest.raises(ValueError, match=r"unknown preset 'fast'; presets: \['quick'\]"):
        make_config("fast")
    assert "--quick" in build_parser().format_help() and "learns in under 4 minutes" in build_parser().format_help()


def test_settings_too_small_to_learn_from_scratch_are_named():
    from fracjax.train.presets import MIN_STEPS_FROM_SCRATCH, learning_problem

    quick = make_config("quick")
    assert learning_problem(quick, 94, 128) is None  # 8 epochs of 94 steps
    problem = learning_problem(quick.replace(phase2_epochs=2), 94, 128)
    assert problem.startswith("188 fine-tuning steps from scratch (no --pretrained) are too few to learn")
    assert learning_problem(quick.replace(max_steps=100), 94, 128).startswith("100 fine-tuning steps")
    assert learning_problem(quick, 94, 64).startswith("64 px is too small to learn from scratch")
    assert learning_problem(quick.replace(phase2_epochs=2, pretrained="imagenet"), 94, 48) is None
    assert learning_problem(make_config(), 187, 128) is None and MIN_STEPS_FROM_SCRATCH <= 8 * 187
