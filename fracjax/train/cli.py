"""The command line of ``python -m fracjax.train`` and ``examples/train.py``,
generated from the config's declarations (:mod:`fracjax.train.config`): one
group per section, one flag per option, its help and default from the field.
Values are only parsed here; :func:`fracjax.train.config.validate` checks them."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import typing
from typing import Any, List, Optional

from fracjax.argparsing import CommandParser
from fracjax.models.pretrained import WeightsUnavailableError
from fracjax.models.weights import KerasWeightsError
from fracjax.train.config import SECTIONS, TrainConfig, fields, flag_of
from fracjax.train.errors import NonFiniteLossError, ResumeError
from fracjax.train.loop import fit
from fracjax.train.presets import MIN_SIZE_FROM_SCRATCH, MIN_STEPS_FROM_SCRATCH, PRESETS
from fracjax.train.run_folder import RunFolderError

DESCRIPTION = (
    "Train a fracture classifier in two phases: phase 1 trains the head with the backbone frozen, phase 2 "
    "fine-tunes the backbone. With no arguments: the paper's hybrid MobileNetV3-Small on the embedded synthetic "
    "data set (prepared on first use), into runs/<name>/ (5-10 minutes on 2 CPU cores). --quick: a recipe that "
    "learns in under 4 minutes (test AUROC about 0.91). Without --pretrained the backbone starts random, and "
    f"settings that give it fewer than {MIN_STEPS_FROM_SCRATCH} fine-tuning steps (phase-2 epochs x training "
    f"images / batch size) or images under {MIN_SIZE_FROM_SCRATCH} px stay near chance: the run says so when it "
    "starts."
)
QUICK_HELP = ("the quick recipe: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in PRESETS["quick"].items())
              + " (options given beside it win)")
GROUP_TITLES = {"model": "model", "data": "data", "optim": "optimisation", "evaluation": "evaluation",
                "run": "running"}


def _value_type(section_cls, f: dataclasses.Field):
    """The scalar type a field's text parses to (int, float or str)."""
    hint = typing.get_type_hints(section_cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if typing.get_origin(args[0]) in (tuple, typing.Tuple):
        args = [typing.get_args(args[0])[0]]
    return args[0] if args[0] in (int, float, str) else str


def _default_word(f: dataclasses.Field) -> str:
    return next(word for word, value in f.metadata["spellings"].items() if value == f.default)


def _help(f: dataclasses.Field) -> str:
    meta = f.metadata
    if meta.get("spellings"):
        shown = _default_word(f)
    elif f.default is None:
        shown = meta.get("default_text")
    else:
        shown = f.default
    return meta["help"] if shown is None else f"{meta['help']} (default: {shown})".replace("%", "%%")


def _add_option(group, section_cls, f: dataclasses.Field, name: str) -> None:
    meta, flag = f.metadata, flag_of(f, name)
    if f.type in (bool, "bool"):
        # A switch names the change from the default: --resume, --no-augment.
        off = flag.replace("--", "--no-", 1)
        if f.default:
            group.add_argument(off, dest=name, action="store_false", default=True, help=meta["switch"])
        else:
            group.add_argument(flag, dest=name, action="store_true", default=False, help=meta["help"])
        return
    kwargs: dict = dict(dest=name, default=f.default, help=_help(f), metavar=meta.get("metavar"))
    if meta.get("append"):
        kwargs.update(action="append", default=[], type=meta["parse"], help=meta["help"])
    elif meta.get("spellings"):
        kwargs.update(choices=list(meta["spellings"]), type=str, default=_default_word(f), metavar=None)
    else:
        kwargs.update(type=meta.get("parse") or _value_type(section_cls, f), choices=meta.get("choices"),
                      nargs=meta.get("nargs"))
    group.add_argument(flag, **kwargs)


def add_options(parser, options_cls) -> None:
    """One flag per option declared on ``options_cls`` (a dataclass of
    :func:`~fracjax.train.config.option` fields), as training's own are made."""
    for f in dataclasses.fields(options_cls):
        if "help" in f.metadata and f.metadata.get("cli", True):
            _add_option(parser, options_cls, f, f.name)


def options_from_args(args: argparse.Namespace, options_cls) -> dict:
    """The values of ``options_cls``'s options that ``args`` holds, as the fields take them."""
    given = vars(args)
    return {f.name: _from_text(f, given[f.name]) for f in dataclasses.fields(options_cls) if f.name in given}


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    groups = {section: parser.add_argument_group(GROUP_TITLES[section]) for section, _ in SECTIONS}
    classes = dict(SECTIONS)
    for section, f, name in fields():
        if f.metadata.get("cli", True):
            _add_option(groups[section], classes[section], f, name)
    return parser


def _from_text(f: dataclasses.Field, value: Any) -> Any:
    spellings = f.metadata.get("spellings")
    if spellings:
        return spellings[value]
    if f.metadata.get("append"):
        return f.metadata["append"](value)
    if f.metadata.get("nargs") and value is not None:
        return tuple(value)
    return value


def config_from_args(argv: Optional[List[str]] = None, prog: Optional[str] = None,
                     parser: Optional[argparse.ArgumentParser] = None) -> TrainConfig:
    """The config the command line asks for. With ``--resume``, the run's saved options
    (``config.json`` in its folder) stand in for the options a resumed run must keep (declared
    ``resume_key``: model, data, order of steps) that the command line does not give."""
    parser = parser or build_parser(prog)
    args = vars(parser.parse_args(argv))
    options = {name: _from_text(f, args[name]) for _, f, name in fields() if name in args}
    if args.get("quick"):  # the preset, then what the command line names itself
        given = explicit_options(parser, argv)
        options = {**PRESETS["quick"], **{name: value for name, value in options.items() if name in given}}
    config = TrainConfig().replace(**options)
    saved_path = os.path.join(config.run_dir, "config.json")
    if not config.run.resume or not os.path.isfile(saved_path):
        return config  # nothing saved: what was given (fit says whether there is anything to resume)
    try:
        with open(saved_path) as f:
            written = json.load(f)  # {"train": the config, "model": its spec} (train.context), or older: the config
        saved = TrainConfig.from_dict(written.get("train", written))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"--resume: cannot read the run's options in {saved_path}: {err}") from None
    # Only what the run must keep (its model, data and order of steps) comes from the saved options;
    # how this launch runs (processes, coordinator, progress, output) is the command line's.
    given = explicit_options(parser, argv)
    taken = {name: value for name, value in saved.resume_keys().items() if name not in given}
    print(f"--resume: the run's own model, data and schedule options from {saved_path}"
          + (f"; given here: {', '.join('--' + n.replace('_', '-') for n in sorted(given))}" if given else ""))
    return config.replace(**taken)


def explicit_options(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> set:
    """The options ``argv`` names itself (not left at their defaults)."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    parser = build_parser(prog)
    try:
        config = config_from_args(argv, parser=parser).validate()
    except ValueError as err:
        parser.error(str(err))
    try:
        fit(config)
    except (KerasWeightsError, WeightsUnavailableError, ResumeError, RunFolderError, FileNotFoundError,
            ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
