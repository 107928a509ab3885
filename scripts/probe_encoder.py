"""Does a model listen? Two measurements that tell a model stuck on the token prior from one
that uses the audio, for a model directory (or one checkpoint of a training run).

  python scripts/probe_encoder.py --model EXP [--checkpoint EXP/checkpoints/step-N.pt]
                                  --data DATA/dev.jsonl [--batches 3]

1. Per encoder stage (front end, each Conformer block, final norm): the share of the output
   variance that varies over time within an utterance, (mean over t of |x_t - mean_t x|^2) /
   (mean over t of |x_t|^2). 0.15 to 0.4 at initialization; near 0 means the stage emits the
   same vector at every frame (a collapsed encoder: CTC can only learn the token prior),
   together with the front end's output norm (about 8 at initialization).
2. The CTC loss of each batch with its own audio, with its neighbour's audio (targets kept,
   lengths cut to the shorter), and with every frame set to the CMVN mean. A model that
   uses the audio loses much more with the wrong audio than with its own.
"""

import argparse
import sys
from itertools import chain, islice
from pathlib import Path

import torch

from u2moe.config import parse_section
from u2moe.data.config import DataConfig
from u2moe.data.dataset import make_dataloader
from u2moe.data.tokenizer import load_tokenizer
from u2moe.errors import UserError
from u2moe.model.io import load_model_dir, load_weights
from u2moe.train.checkpoint import load_checkpoint


def time_varying_share(x: torch.Tensor, length: int) -> float:
    """x (1, T, d) -> share of its variance that varies over the first `length` frames."""
    x = x[0, :length]
    return ((x - x.mean(0)).pow(2).mean() / x.pow(2).mean()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model or experiment dir")
    parser.add_argument("--checkpoint", type=Path, help="a training checkpoint to probe instead")
    parser.add_argument("--data", type=Path, required=True, help="a manifest, e.g. dev.jsonl")
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, config, _ = load_model_dir(args.model)
    if args.checkpoint:
        load_weights(model, load_checkpoint(args.checkpoint)["model"], str(args.checkpoint))
    data_cfg = parse_section(DataConfig, config.get("data"), "data")
    tokenizer = load_tokenizer(args.model, data_cfg.tokenizer)
    batches = iter(make_dataloader(args.data, data_cfg, tokenizer, train=False))

    encoder = model.encoder
    stages = [encoder.embed, *encoder.encoders, encoder.after_norm]
    names = ["front end", *(f"block {i}" for i in range(len(encoder.encoders))), "final norm"]
    outputs = []
    hooks = [
        stage.register_forward_hook(lambda m, i, o: outputs.append(o[0] if type(o) is tuple else o))
        for stage in stages
    ]
    first = next(batches)
    feats, lengths = first["feats"][:1], first["feats_lengths"][:1]
    with torch.no_grad():
        model.encoder(feats[:, : lengths[0]], lengths)
    for hook in hooks:
        hook.remove()
    subsampled = encoder.embed.output_length(int(lengths[0]))
    print("stage        time-varying share   output norm")
    for name, out in zip(names, outputs, strict=True):
        norm = out[0, :subsampled].norm(dim=-1).mean().item()
        print(f"{name:12s} {time_varying_share(out, subsampled):19.3f} {norm:13.1f}")

    print("CTC loss: own audio | neighbour's audio | CMVN-mean frames")
    for i, batch in enumerate(islice(chain([first], batches), args.batches)):
        feats, lengths = batch["feats"], batch["feats_lengths"]
        targets, target_lengths = batch["targets"], batch["target_lengths"]
        neighbour = torch.roll(torch.arange(feats.size(0)), 1)
        shorter = torch.minimum(lengths, lengths[neighbour])
        mean_frames = torch.zeros_like(feats) + encoder.global_cmvn.mean
        with torch.no_grad():
            losses = [
                model(f, n, targets, target_lengths)["loss_ctc"].item()
                for f, n in ((feats, shorter), (feats[neighbour], shorter), (mean_frames, lengths))
            ]
        print(f"batch {i}: {losses[0]:.1f} | {losses[1]:.1f} | {losses[2]:.1f}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"probe_encoder: error: {e}")
