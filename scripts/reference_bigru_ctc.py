"""A yardstick for the CTC plateau: a plain 2-layer BiGRU-CTC trained on the same batches.

  python scripts/reference_bigru_ctc.py --config configs/small.yaml --data DATA [--steps 1500]

It reads the prepared data directory (units, CMVN, train.jsonl) and the config's `data`
section exactly as `u2moe train` does, stacks 4 fbank frames (the encoder's frame rate),
and trains with Adam (lr 1e-3). Every 50 steps it prints the mean CTC loss and the greedy
hypothesis of the batch's first utterance: the step where words appear is how long the
plateau lasts for a model with a strong sequential bias on this data.
"""

import argparse
import itertools
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from u2moe.config import load_yaml, parse_section
from u2moe.data.cmvn import load_cmvn
from u2moe.data.config import DataConfig
from u2moe.data.dataset import make_dataloader
from u2moe.data.tokenizer import load_tokenizer

STACK = 4


class BiGRUCTC(nn.Module):
    def __init__(self, input_dim: int, vocab_size: int, hidden: int = 192):
        super().__init__()
        self.inp = nn.Linear(STACK * input_dim, 256)
        self.rnn = nn.GRU(256, hidden, 2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, F) normalized fbank -> log-probs (B, T // 4, V)."""
        b, t, f = x.shape
        x = x[:, : t // STACK * STACK].reshape(b, t // STACK, STACK * f)
        return self.out(self.rnn(torch.relu(self.inp(x)))[0]).log_softmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_cfg = parse_section(DataConfig, load_yaml(args.config).get("data"), "data")
    tokenizer = load_tokenizer(args.data, data_cfg.tokenizer)
    mean, istd = load_cmvn(args.data / "global_cmvn")
    torch.manual_seed(0)
    model = BiGRUCTC(data_cfg.features.num_mel_bins, tokenizer.vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    step, losses, start = 0, [], time.perf_counter()
    for epoch in itertools.count():
        batches = make_dataloader(args.data / "train.jsonl", data_cfg, tokenizer, True, 0, epoch)
        for batch in batches:
            if "feats" not in batch:  # a worker's report of skipped utterances
                continue
            log_probs = model((batch["feats"] - mean) * istd)
            loss = F.ctc_loss(
                log_probs.transpose(0, 1),
                batch["targets"].clamp(min=0),
                batch["feats_lengths"] // STACK,
                batch["target_lengths"],
                reduction="sum",
                zero_infinity=True,
            ) / log_probs.size(0)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            step += 1
            losses.append(loss.item())
            if step % 50 == 0:
                best = log_probs[0].argmax(-1).tolist()
                tokens = [t for i, t in enumerate(best) if t != 0 and (i == 0 or best[i - 1] != t)]
                print(
                    f"step {step} epoch {epoch} ctc {sum(losses) / len(losses):.1f} "
                    f"{time.perf_counter() - start:.0f}s | {tokenizer.decode(tokens)[:60]}",
                    flush=True,
                )
                losses = []
            if step >= args.steps:
                return


if __name__ == "__main__":
    main()
