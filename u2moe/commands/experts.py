"""`u2moe experts`: what the experts of a MoE model do on a manifest's utterances.

    u2moe experts --model exp/moe --data data/test.jsonl --out exp/experts --by voice \\
        [--chunk-size 16] [--max-utts 200]

Runs the encoder over each utterance (full context, or chunk masks of --chunk-size encoder
frames) and reads every encoder MoE layer's routing (u2moe/model/routing_stats.py). OUT
gets `experts.json` (per layer: share of frame-slots per expert, in total and by rank;
how often neighbouring frames keep the same first expert and the same set; router and
usage entropy; the share per value of the --by field), `layers.png` (layers x experts)
and, with --by, `by_<field>.png` (field values x experts, averaged over the layers).
Decoder layers route tokens, not audio frames, and are not reported. Utterances that
cannot be read are skipped and counted.
"""

import argparse
import json
import sys
from pathlib import Path

from u2moe.commands.arguments import output_dir, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="MoE model directory")
    parser.add_argument(
        "--data", required=True, help="JSON-lines manifest, WeNet data.list or Kaldi data dir"
    )
    parser.add_argument("--out", required=True, type=output_dir, help="report directory")
    parser.add_argument("--by", help="manifest field to split the routing by (speaker, voice...)")
    parser.add_argument(
        "--chunk-size", type=int, default=-1, help="encoder frames per chunk; <= 0: full context"
    )
    parser.add_argument("--max-utts", type=positive_int, help="read at most this many")


def main(args: argparse.Namespace) -> int:
    import torch

    from u2moe.api import load_model
    from u2moe.data.files import write_text_atomic
    from u2moe.data.manifest import BadEntry, Manifest
    from u2moe.errors import UserError
    from u2moe.model.moe import mark_real_frames, moe_layers
    from u2moe.model.routing_stats import RoutingStats
    from u2moe.progress import progress
    from u2moe.train.plots import plot_heatmap

    transcriber = load_model(args.model)
    model = transcriber.backend.model
    if not moe_layers(model.encoder):
        raise UserError(f"{args.model}: the encoder has no MoE layer (a dense model?)")
    manifest = Manifest(args.data)
    utterances = [u for u in manifest if not isinstance(u, BadEntry)]
    skipped = len(manifest) - len(utterances)  # bad entries, then unreadable audio
    if args.max_utts is not None:
        utterances = utterances[: args.max_utts]
    if args.by is not None and not any(args.by in u.extra for u in utterances):
        fields = sorted({f for u in utterances for f in u.extra}) or ["none"]
        raise UserError(
            f"{args.data}: no utterance has the field {args.by!r} "
            f"(its extra fields: {', '.join(fields)})"
        )
    stats = RoutingStats(model.encoder)
    read = 0
    bar = progress(utterances, unit="utt", desc="experts")
    for utt in bar:
        try:
            feats = transcriber.features(utt.audio, start=utt.start, end=utt.end, name=utt.key)
        except UserError as e:
            bar.write(f"u2moe experts: skipped {utt.key}: {e}", file=sys.stderr)
            skipped += 1
            continue
        feats = torch.from_numpy(feats)[None].to(transcriber.device)
        with torch.inference_mode():
            _, enc_lengths = model.encode(feats, torch.tensor([feats.shape[1]]), args.chunk_size)
        mark_real_frames(model.encoder, enc_lengths)
        read += 1
        stats.add(None if args.by is None else str(utt.extra.get(args.by, "(none)")))
    layers = {f"encoder.{name}": layer for name, layer in stats.report().items()}
    report = {
        "model": str(args.model),
        "data": str(args.data),
        "chunk_size": args.chunk_size,
        "by": args.by,
        "utterances": read,
        "skipped": skipped,
        "layers": layers,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "experts.json", json.dumps(report, indent=1) + "\n")
    chunk = "full context" if args.chunk_size <= 0 else f"chunk {args.chunk_size}"
    shares = {name: layer["share"] for name, layer in layers.items()}
    plot_heatmap(shares, args.out / "layers.png", f"routing ({chunk})", "expert", "share")
    if args.by is not None:
        plot_heatmap(
            mean_by_group(layers),
            args.out / f"by_{args.by}.png",
            f"routing by {args.by}, mean over layers ({chunk})",
            "expert",
            "share",
        )
    print(format_report(report))
    return 0


def mean_by_group(layers: dict[str, dict]) -> dict[str, list[float]]:
    """{group: (E,) share per expert, averaged over the layers} (layers of E experts)."""
    groups = sorted({g for layer in layers.values() for g in layer["by"]})
    out = {}
    for group in groups:
        rows = [layer["by"][group] for layer in layers.values() if group in layer["by"]]
        out[group] = [sum(col) / len(rows) for col in zip(*rows, strict=True)]
    return out


def format_report(report: dict) -> str:
    """A table, one line per layer: frames, top share, stickiness, entropies."""
    lines = [
        f"{report['utterances']} utterances ({report['skipped']} skipped), chunk "
        f"{report['chunk_size']}",
        f"{'layer':<42}{'frames':>8}{'max share':>10}{'same top1':>10}{'same set':>9}"
        f"{'H(router)':>10}{'H(usage)':>9}{'log E':>6}",
    ]
    for name, layer in report["layers"].items():
        lines.append(
            f"{name:<42}{layer['frames']:>8}{max(layer['share']):>10.3f}"
            f"{layer['same_top1']:>10.3f}{layer['same_set']:>9.3f}"
            f"{layer['router_entropy']:>10.3f}{layer['usage_entropy']:>9.3f}"
            f"{layer['max_entropy']:>6.2f}"
        )
    return "\n".join(lines)
