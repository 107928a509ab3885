"""The main job's plumbing, end to end on a tiny corpus with tiny models (about a minute)."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from u2moe.cli import main
from u2moe.demo import (
    DECODINGS,
    MODES,
    PAPER_MODELS,
    DemoSize,
    Model,
    paper_table,
    run_demo,
    stages_side_by_side,
)
from u2moe.errors import UserError

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"


def test_demo_trains_decodes_and_reports_moe_and_dense(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    for side in ("encoder", "decoder"):
        config["model"][side]["ffn"] = {"type": "dense"}
    dense = tmp_path / "tiny_dense.yaml"
    dense.write_text(yaml.safe_dump(config))
    models = [Model("moe", TINY), Model("dense", dense)]
    size = DemoSize(corpus_args=("--tiny",), max_steps=4)

    report = run_demo(tmp_path / "demo", models, size)

    rows = [line for line in report.splitlines() if line.startswith("| moe") or
            line.startswith("| dense")]  # fmt: skip
    assert len(rows) == 2 * len(DECODINGS) * len(MODES)
    assert sum("streaming, chunk 16 |" in row for row in rows) == 2 * len(MODES)
    assert sum("int8" in row for row in rows) == 2 * len(MODES)
    assert "RTF MoE / dense, full context" in report
    assert (tmp_path / "demo" / "REPORT.md").read_text() == report
    stages = sorted(p.stem for p in (tmp_path / "demo" / "stages").glob("*.done"))
    assert stages == [
        "corpus", "decode-dense-chunk16", "decode-dense-chunk16-int8", "decode-dense-full",
        "decode-moe-chunk16", "decode-moe-chunk16-int8", "decode-moe-full", "lm", "prepare",
        "train-dense", "train-moe",
    ]  # fmt: skip
    # A rerun finds every stage done and rebuilds the same table and total time.
    again = run_demo(tmp_path / "demo", models, size)
    assert [r for r in again.splitlines() if r.startswith("| moe")] == rows[: len(rows) // 2]
    total = re.compile(r"Total time [0-9.]+ min")
    assert total.findall(again) == total.findall(report) != []
    # A stage done with another command (an older demo's modes) runs again; the rest not.
    marker, train = (
        tmp_path / "demo" / "stages" / f"{n}.done" for n in ("decode-moe-full", "train-moe")
    )
    new_command, train_before = marker.read_text().splitlines()[0], train.read_text()
    marker.write_text(new_command.replace(",ctc_lexicon_beam_search", "") + "\n1.0 s\n")
    run_demo(tmp_path / "demo", models, size)
    assert marker.read_text().splitlines()[0] == new_command and train.read_text() == train_before


def test_side_by_side_stages_mark_successes_and_name_failures(tmp_path):
    stages = {
        "broken": ["train", "--config", tmp_path / "missing.yaml", "--data", tmp_path,
                   "--exp", tmp_path / "exp"],
        "fine": ["info", TINY, "--vocab-size", 30],
    }  # fmt: skip
    with pytest.raises(UserError, match="broken \\(exit 2\\)") as failure:
        stages_side_by_side(tmp_path, stages)
    assert "fine" not in str(failure.value)
    assert [p.name for p in (tmp_path / "stages").iterdir()] == ["fine.done"]
    assert "active" in (tmp_path / "logs" / "fine.log").read_text()  # its output, not lost


def fake_summary(wer: float, rtf: float) -> SimpleNamespace:
    """What paper_table reads of a DecodeSummary: per mode the WER rate and the RTF."""
    mode = SimpleNamespace(wer=SimpleNamespace(rate=wer), rtf=rtf)
    return SimpleNamespace(modes=dict.fromkeys(MODES, mode))


def test_paper_table_has_three_models_and_the_claims_two_ratios():
    decodings = {d.name: d for d in DECODINGS}
    # (WER, RTF full context); chunk 16 doubles the RTF
    measured = {"moe": (0.10, 0.02), "dense": (0.20, 0.01), "wide": (0.08, 0.05)}
    results = [
        (Model(name, TINY), decodings[d], fake_summary(wer, rtf * (2 if d == "chunk16" else 1)))
        for name, (wer, rtf) in measured.items()
        for d in ("full", "chunk16")
    ]
    counts = {"moe": (9_300_000, 3_100_000), "dense": (4_000_000, 3_000_000),
              "wide": (9_320_000, 9_320_000)}  # fmt: skip
    lines = paper_table(results, counts)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split(" | ")[0] for row in rows] == ["| moe", "| dense", "| wide"]
    assert rows[0].startswith("| moe | 9.30 M | 3.10 M | 10.00 | 10.00 |")
    assert rows[2].endswith("| 0.0500 | 0.1000 |")
    assert f"- WER MoE / wide dense (full context): {MODES[0]} 1.25, {MODES[1]} 1.25" in (
        "\n".join(lines)
    )
    assert "- RTF MoE / small dense (attention_rescoring): full context 2.00, chunk 16 2.00" in (
        lines
    )
    assert paper_table(results[:4], counts) == []  # no wide model: no table (plain demo)


def test_demo_paper_trains_the_wide_model_too(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr("u2moe.demo.run_demo", lambda out, models, size: seen.append(models) or "")
    for extra in ([], ["--paper"]):
        assert main(["demo", "--quick", "--out", str(tmp_path), *extra]) == 0
    assert [[m.name for m in models] for models in seen] == [["moe", "dense"], list(PAPER_MODELS)]
    assert seen[1][2].config == Path("configs/small_dense_wide.yaml")
