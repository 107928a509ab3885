"""Training plots draw whatever shape the records have."""

from u2moe.train.plots import plot_expert_heatmap


def test_heatmap_of_layers_with_different_expert_counts(tmp_path):
    fractions = {
        "encoder.encoders.0.feed_forward": [0.5, 0.25, 0.25, 0.0],
        "decoder.left_decoder.decoders.0.feed_forward": [0.5, 0.5],
        "decoder.right_decoder.decoders.0.feed_forward": [0.1, 0.2, 0.3, 0.2, 0.1, 0.1],
    }
    plot_expert_heatmap(fractions, tmp_path / "plots" / "experts.png", "utilization")
    assert (tmp_path / "plots" / "experts.png").read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["experts.png"]
