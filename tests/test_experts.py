import json
import math

import pytest
import soundfile as sf
import torch
from conftest import peaky, tiny_model
from test_decode_cli import UNITS, tone

from u2moe.cli import main
from u2moe.model.io import save_model_dir
from u2moe.model.moe import MoEFeedForward, RoutingRecord, mark_real_frames, moe_layers
from u2moe.model.routing_stats import LayerSums, RoutingStats


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    for ffn in ("moe", "dense"):
        model = peaky(tiny_model(ffn, vocab_size=len(UNITS)))
        save_model_dir(root / ffn, model, {"data": {}}, UNITS)
    lines = []
    for i, seconds in enumerate([1.0, 0.7, 1.3, 0.9]):
        sf.write(root / f"u{i}.wav", tone(seconds, i), 16000)
        voice = "alto" if i % 2 else "bass"
        lines.append({"key": f"u{i}", "audio": f"u{i}.wav", "text": "a", "voice": voice})
    lines.append({"key": "bad", "audio": "missing.wav", "text": "a", "voice": "alto"})
    (root / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def run(corpus, *extra):
    model, data = str(corpus / "moe"), str(corpus / "data.jsonl")
    return main(["experts", "--model", model, "--data", data, *extra])


@pytest.mark.parametrize("chunk", ["-1", "2"])
def test_report_shares_sum_to_one_and_plots_are_written(corpus, chunk, capsys):
    out = corpus / f"out{chunk}"
    assert run(corpus, "--out", str(out), "--by", "voice", "--chunk-size", chunk) == 0
    report = json.loads((out / "experts.json").read_text())
    assert report["utterances"] == 4 and report["skipped"] == 1
    ffns = ("feed_forward", "feed_forward_macaron")
    assert list(report["layers"]) == [f"encoder.encoders.{i}.{f}" for i in (0, 1) for f in ffns]
    for layer in report["layers"].values():
        assert layer["frames"] > 0
        assert sum(layer["share"]) == pytest.approx(1.0)
        assert [sum(row) for row in layer["share_by_rank"]] == pytest.approx([1.0, 1.0])
        assert sum(layer["frame_fraction"]) == pytest.approx(2.0)  # top-2
        assert sorted(layer["by"]) == ["alto", "bass"]
        assert all(sum(v) == pytest.approx(1.0) for v in layer["by"].values())
        assert 0.0 <= layer["same_set"] <= 1.0 and 0.0 <= layer["same_top1"] <= 1.0
        assert 0.0 < layer["router_entropy"] <= math.log(4) + 1e-9
        assert 0.0 < layer["usage_entropy"] <= math.log(4) + 1e-9
    assert (out / "layers.png").stat().st_size > 0 and (out / "by_voice.png").stat().st_size > 0
    assert "skipped bad" in capsys.readouterr().err


def test_counts_equal_a_top_k_over_the_router_weights(corpus):
    model = tiny_model("moe", seed=3)
    inputs = {}
    for name, layer in model.encoder.named_modules():
        if isinstance(layer, MoEFeedForward):
            layer.register_forward_pre_hook(lambda m, a, name=name: inputs.update({name: a[0]}))
    stats = RoutingStats(model.encoder)
    feats = torch.randn(1, 60, 80)
    with torch.no_grad():
        _, lengths = model.encode(feats, torch.tensor([60]))
    mark_real_frames(model.encoder, lengths)
    stats.add("g")
    report = stats.report()
    for name, layer in stats.layers.items():
        x = inputs[name].reshape(-1, 32)
        experts = (x @ layer.router.weight.T).topk(2, dim=-1).indices  # (N, 2)
        expected = [torch.bincount(experts[:, r], minlength=4).tolist() for r in range(2)]
        frames = report[name]["frames"]
        assert frames == int(lengths[0]) == x.shape[0]
        counts = [[round(s * frames) for s in row] for row in report[name]["share_by_rank"]]
        assert counts == expected
        top1 = experts[:, 0]
        assert report[name]["same_top1"] == pytest.approx(
            (top1[1:] == top1[:-1]).float().mean().item()
        )


def test_identical_frames_keep_their_experts():
    torch.manual_seed(0)
    layer = MoEFeedForward(8, 16, torch.nn.ReLU(), n_experts=4, top_k=2)
    stats = RoutingStats(layer)
    layer(torch.randn(1, 1, 8).expand(2, 10, 8))
    stats.add()
    (report,) = stats.report().values()
    assert report["same_top1"] == report["same_set"] == 1.0
    assert report["usage_entropy"] == pytest.approx(math.log(2))  # two experts, half each


def test_neighbours_and_entropy_from_a_known_record():
    experts = torch.tensor([[0, 1], [1, 0], [1, 2], [1, 2], [3, 0], [0, 3]])
    record = RoutingRecord(torch.zeros(6, 4), experts, (2, 3))
    record.mark_real(torch.tensor([3, 2]))  # the last frame is padding
    sums = LayerSums(n_experts=4, top_k=2)
    sums.add(record, None)
    report = sums.report()
    # pairs: (0,1) (1,2) in sequence 0, (3,4) in sequence 1; the padded frame 5 in none
    assert report["same_top1"] == pytest.approx(1 / 3)  # 1->1
    assert report["same_set"] == pytest.approx(1 / 3)  # {0,1} == {1,0}
    assert report["router_entropy"] == pytest.approx(math.log(4))  # uniform logits
    assert report["frames"] == 5
    assert report["share_by_rank"][0] == pytest.approx([0.2, 0.6, 0.0, 0.2])


def test_bad_input_is_one_line(corpus, tmp_path, capsys):
    assert run(corpus, "--out", str(tmp_path), "--by", "engine") == 2
    err = capsys.readouterr().err
    assert "'engine'" in err and "voice" in err and len(err.strip().splitlines()) == 1
    args = ["experts", "--model", str(corpus / "dense"), "--data", str(corpus / "data.jsonl")]
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "no MoE layer" in capsys.readouterr().err
    assert not moe_layers(torch.nn.Linear(2, 2))
    assert not (tmp_path / "experts.json").exists()
