"""Each flag's default is declared once, in the settings dataclasses (``utils/config.py``): the
parsers read them, and settings rebuilt from saved flags (no parser) equal a parsed command
line's."""
import dataclasses

import pytest

import run_class_apt
import run_mae_pretraining
from models.config import FinetuneConfig, ModelConfig
from utils.config import (BackboneSource, DataConfig, OptimConfig, PretrainDataConfig, RunConfig,
                          TrainConfig, field_defaults)

FINETUNE_PARTS = (ModelConfig, DataConfig, OptimConfig, TrainConfig, RunConfig, BackboneSource)


def _parser_defaults(parser):
    return vars(parser.parse_args([]))  # what the parser gives when no flag is passed


def _same(a, b):
    return (tuple(a) if isinstance(a, list) else a) == (tuple(b) if isinstance(b, list) else b)


@pytest.mark.parametrize("part", FINETUNE_PARTS + (FinetuneConfig,))
def test_finetuning_flags_default_to_the_dataclass_fields(part):
    parsed = _parser_defaults(run_class_apt.get_args_parser())
    checked = 0
    for name, default in field_defaults(part).items():
        if name in parsed:
            assert _same(parsed[name], default), f"--{name}: {parsed[name]!r} != {default!r}"
            checked += 1
    assert checked


def test_pretraining_data_flags_default_to_its_dataclass():
    parsed = _parser_defaults(run_mae_pretraining.get_args_parser())
    own = {f.name for f in dataclasses.fields(PretrainDataConfig)} & set(parsed)
    assert {"data_set", "batch_size", "mask_ratio", "flip", "num_frames"} <= own
    for name in own:
        assert _same(parsed[name], getattr(PretrainDataConfig, name)), name


def test_settings_from_saved_flags_equal_the_parsed_ones(tmp_path):
    argv = ["--data_path", str(tmp_path), "--data_set", "custom", "--nb_classes", "3",
            "--transfer_type", "vpt", "--prompt_num_tokens", "2", "--lr", "0.5"]
    parsed = run_class_apt.make_config(run_class_apt.get_args_parser().parse_args(argv))
    saved = FinetuneConfig.from_args({"data_path": str(tmp_path), "data_set": "custom",
                                      "nb_classes": 3, "transfer_type": "vpt",
                                      "prompt_num_tokens": 2, "lr": 0.5})
    for part in ("model", "data", "optim", "train", "run", "backbone", "eval", "deepspeed"):
        assert getattr(saved, part) == getattr(parsed, part), part
