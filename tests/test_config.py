from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from u2moe.config import ConfigError, bounded, load_config, load_yaml, parse_section


@dataclass
class Inner:
    size: int = 4
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    rate: float = 0.1
    name: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_parse_defaults_and_nesting():
    cfg = parse_section(Outer, {"rate": 1, "inner": {"kind": "b"}}, "x")
    assert cfg.rate == 1.0 and isinstance(cfg.rate, float)
    assert cfg.inner == Inner(size=4, kind="b")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"rat": 1}, "x: unknown key 'rat'"),
        ({"inner": {"size": "big"}}, "x.inner.size: expected int"),
        ({"inner": {"kind": "c"}}, "x.inner.kind: 'c' is not one of"),
        ({"inner": [1]}, "x.inner: expected a mapping"),
    ],
)
def test_parse_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_section(Outer, data, "x")


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize(
    ("section", "data", "message"),
    [
        (
            "model",
            {"encoder": {"dropout": -0.1}},
            "model.encoder.dropout must be in [0, 1], got -0.1",
        ),
        (
            "model",
            {"decoder": {"dropout": 1.5}},
            "model.decoder.dropout must be in [0, 1], got 1.5",
        ),
        ("model", {"encoder": {"n_heads": 0}}, "model.encoder.n_heads must be >= 1, got 0"),
        ("model", {"encoder": {"d_model": 0}}, "model.encoder.d_model must be >= 1, got 0"),
        ("model", {"encoder": {"d_model": -4}}, "model.encoder.d_model must be >= 1, got -4"),
        ("model", {"decoder": {"d_ff": -1}}, "model.decoder.d_ff must be >= 1, got -1"),
        ("model", {"encoder": {"n_layers": -1}}, "model.encoder.n_layers must be >= 1, got -1"),
        ("model", {"decoder": {"n_r2l_layers": -2}}, "model.decoder.n_r2l_layers must be >= 0"),
        ("model", {"encoder": {"ffn": {"n_experts": 0}}}, "model.encoder.ffn.n_experts must be"),
        ("model", {"lsm_weight": 1}, "model.lsm_weight must be in [0, 1), got 1"),
        ("model", {"vocab_size": 2}, "model.vocab_size must be >= 3, got 2"),
        ("data", {"features": {"frame_shift": 0}}, "data.features.frame_shift must be > 0, got 0"),
        ("data", {"augment": {"speed_perturb": [0.0]}}, "data: augment.speed_perturb must list"),
        ("data", {"batch": {"num_workers": -1}}, "data.batch.num_workers must be >= 0, got -1"),
        ("decode", {"beam_size": 0}, "decode: beam_size must be >= 1, got 0"),
        ("train", {"lr": 0}, "train: lr must be > 0, got 0"),
        ("trian", {}, "c.yaml: unknown section 'trian' (known: model, data, train, decode)"),
    ],
)
def test_every_section_of_a_config_file_is_checked_when_read(tmp_path, section, data, message):
    config = load_yaml(CONFIGS / "tiny.yaml")
    config[section] = {**(config.get(section) or {}), **data}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "c.yaml")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith(str(tmp_path / "c.yaml"))


def test_shipped_configs_pass_the_checks():
    for path in CONFIGS.glob("*.yaml"):
        assert load_config(path)


@dataclass
class Ranged:
    chunk: int = bounded(-1, ge=1, also=(-1,))
    prob: float = bounded(0.5, gt=0, lt=1)
    speeds: list[float] = field(default_factory=list)


def test_bounds_name_the_allowed_values():
    assert parse_section(Ranged, {"chunk": -1, "prob": 0.1}, "x").chunk == -1
    for data, message in [
        ({"chunk": 0}, "x.chunk must be -1 or >= 1, got 0"),
        ({"prob": 1.0}, "x.prob must be in (0, 1), got 1.0"),
        ({"prob": float("nan")}, "x.prob must be in (0, 1), got nan"),
        ({"chunk": True}, "x.chunk: expected int, got True"),
    ]:
        with pytest.raises(ConfigError) as error:
            parse_section(Ranged, data, "x")
        assert str(error.value) == message
