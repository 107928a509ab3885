"""A tiny prepared data directory for the training tests (what `u2moe prepare` leaves)."""

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from u2moe.data.cmvn import CmvnStats
from u2moe.data.config import TokenizerConfig
from u2moe.data.features import compute_fbank
from u2moe.data.tokenizer import train_tokenizer

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
WORDS = ["ab", "ba", "cab", "dad", "bad", "add"]


def make_prepared_dir(root: Path, n_train: int = 16, n_dev: int = 4) -> Path:
    """root/{wavs/, train.jsonl, dev.jsonl, units.txt, global_cmvn}: short tone+noise clips."""
    rng = np.random.default_rng(0)
    (root / "wavs").mkdir(parents=True)
    stats = CmvnStats(80)
    manifests = {"train": [], "dev": []}
    for i in range(n_train + n_dev):
        split = "dev" if i < n_dev else "train"
        n = int(16000 * rng.uniform(0.5, 1.0))
        t = np.arange(n) / 16000
        tone = 0.1 * np.sin(2 * np.pi * rng.uniform(200, 800) * t)
        audio = (tone + 0.01 * rng.standard_normal(n)).astype(np.float32)
        path = root / "wavs" / f"utt{i:02d}.wav"
        sf.write(path, audio, 16000)
        text = " ".join(rng.choice(WORDS, 2))
        manifests[split].append(
            {"key": f"utt{i:02d}", "audio": str(path), "text": text, "duration": n / 16000}
        )
        if split == "train":
            stats.add(compute_fbank(audio))
    for split, lines in manifests.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    train_tokenizer([x["text"] for x in manifests["train"]], TokenizerConfig(), root)
    stats.save(root / "global_cmvn")
    return root
