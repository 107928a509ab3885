"""The `data:` section: nested parsing, one-line errors for typos and inconsistent values."""

import pytest

from u2moe.config import ConfigError, parse_section
from u2moe.data.config import DataConfig


def test_parses_nested_sections():
    cfg = parse_section(
        DataConfig,
        {
            "features": {"dither": 0},
            "tokenizer": {"type": "bpe", "vocab_size": 300},
            "augment": {"speed_perturb": [1.0], "spec_aug": {"num_t_mask": 0}},
            "batch": {"max_frames_in_batch": 5000, "max_duration": 20},
        },
        "x.yaml: data",
    )
    assert cfg.features.dither == 0.0 and cfg.features.num_mel_bins == 80
    assert cfg.tokenizer.type == "bpe" and cfg.augment.speed_perturb == [1.0]
    assert cfg.augment.spec_aug.num_t_mask == 0 and cfg.augment.spec_aug.max_f == 10
    assert cfg.batch.max_duration == 20.0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"batch": {"max_frame": 1}}, "x.yaml: data.batch: unknown key 'max_frame'"),
        ({"tokenizer": {"type": "word"}}, "'word' is not one of 'char', 'bpe'"),
        ({"augment": {"speed_perturb": [0.1]}}, "augment.speed_perturb must list speeds"),
        ({"augment": {"start_epoch": -1}}, "augment.start_epoch must be >= 0, got -1"),
        ({"batch": {"max_frames_in_batch": 1000}}, "batch.max_duration 40.0 s"),
        ({"batch": {"min_duration": 5, "max_duration": 2}}, "batch.min_duration must be"),
    ],
)
def test_one_line_errors(section, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_section(DataConfig, section, "x.yaml: data")
    assert "\n" not in str(error.value)
