import json
from pathlib import Path

import pytest
import yaml

from u2moe.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def info(capsys, *argv) -> dict:
    assert main(["info", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_scale_configs_land_on_the_papers_sizes(capsys):
    dense = info(capsys, CONFIGS / "dense_225m.yaml")
    moe = info(capsys, CONFIGS / "moe_1b.yaml")
    dense_1b = info(capsys, CONFIGS / "dense_1b.yaml")
    assert abs(dense["total"] / 225e6 - 1) < 0.05
    assert 4.5 < moe["total"] / dense["total"] < 4.9
    assert 0.95e9 < moe["total"] < 1.1e9
    assert 0.95e9 < dense_1b["total"] < 1.1e9
    # Dense: everything is active. MoE: the same non-FFN parts, a quarter of the experts.
    assert dense["active_per_frame"] == dense["total"]
    parts = {p["name"]: p for p in moe["parts"]}
    dense_parts = {p["name"]: p for p in dense["parts"]}
    assert parts["encoder attention"] == dense_parts["encoder attention"]
    for side in ("encoder FFN", "decoder FFN"):
        routers = parts[side]["total"] - 8 * dense_parts[side]["total"]
        assert routers > 0  # 8 experts of the dense FFN's size plus the routers
        assert parts[side]["active"] == 2 * dense_parts[side]["total"] + routers
    assert sum(p["total"] for p in moe["parts"]) == moe["total"]
    assert 1.4 < moe["active_per_frame"] / dense["total"] < 1.6


def test_text_report_and_model_directory(tmp_path, capsys):
    config = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    units = ["<blank>", "<unk>", "a", "b", "<sos/eos>"]
    (tmp_path / "units.txt").write_text("".join(f"{u} {i}\n" for i, u in enumerate(units)))
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vocabulary 5" in out and "encoder FFN" in out
    assert out.splitlines()[-2].startswith("total")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["encoder"].update(d_modle=512), "unknown key 'd_modle'"),
        (lambda m: m["encoder"].update(n_heads=7), "not divisible"),
        (lambda m: m["decoder"]["ffn"].update(top_k=9), "top_k 9"),
        (lambda m: m.update(vocab_size=None), "vocab_size"),
    ],
)
def test_bad_config_is_a_one_line_error(tmp_path, capsys, edit, message):
    config = yaml.safe_load((CONFIGS / "moe_1b.yaml").read_text())
    edit(config["model"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("u2moe info: error: ") and message in err
    assert str(path) in err and len(err.strip().splitlines()) == 1


def test_missing_config_file(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and len(err.strip().splitlines()) == 1


def test_top_k_changes_the_active_count_only(capsys):
    top2 = info(capsys, CONFIGS / "moe_1b.yaml")
    top1 = info(capsys, CONFIGS / "moe_1b.yaml", "--top-k", 1)
    assert top1["total"] == top2["total"]
    assert top1["ffn"]["encoder"]["top_k"] == 1
    parts1 = {p["name"]: p["active"] for p in top1["parts"]}
    parts2 = {p["name"]: p["active"] for p in top2["parts"]}
    assert parts1["encoder attention"] == parts2["encoder attention"]
    assert parts1["encoder FFN"] < parts2["encoder FFN"]
    for argv, message in [
        ([CONFIGS / "moe_1b.yaml", "--top-k", 9], "--top-k 9 must be in [1, encoder experts 8]"),
        ([CONFIGS / "dense_225m.yaml", "--top-k", 1], "needs a MoE model"),
    ]:
        assert main(["info", *map(str, argv)]) == 2
        assert message in capsys.readouterr().err
