from dataclasses import dataclass, field
from typing import Literal

import pytest

from u2moe.config import ConfigError, load_yaml, parse_section


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
