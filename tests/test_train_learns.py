"""Training learns an acoustic mapping: words spelled in tone bursts, one pitch per letter.

The plateau of the speech demo (docs/TRAINING.md) is a matter of data and budget; this test
guards the pipeline itself (features, CMVN, masks, CTC and decoder losses, optimizer,
averaging, decoding): a small model must go from 100% to under 30% WER in 200 steps.
"""

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from train_data import CONFIG  # noqa: I001 (tests/ helper)

import u2moe
from u2moe.cli import main
from u2moe.config import load_yaml
from u2moe.decode.scoring import word_errors
from u2moe.train.trainer import train

LETTERS = "abcd"
RATE = 16000


def tone_words(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """1-3 words of 1-2 letters; each letter a Hann-windowed tone at its own pitch."""
    n_words = rng.integers(1, 4)
    words = ["".join(rng.choice(list(LETTERS), rng.integers(1, 3))) for _ in range(n_words)]
    pieces = [np.zeros(int(RATE * rng.uniform(0.05, 0.15)))]
    for word in words:
        for letter in word:
            n = int(RATE * rng.uniform(0.12, 0.18))
            pitch = 300 * 1.5 ** LETTERS.index(letter)
            pieces.append(0.3 * np.sin(2 * np.pi * pitch * np.arange(n) / RATE) * np.hanning(n))
        pieces.append(np.zeros(int(RATE * rng.uniform(0.08, 0.12))))
    audio = np.concatenate(pieces)
    return (audio + 1e-3 * rng.standard_normal(len(audio))).astype(np.float32), " ".join(words)


def write_split(root: Path, split: str, n: int, rng: np.random.Generator) -> Path:
    lines = []
    for i in range(n):
        audio, text = tone_words(rng)
        path = root / f"{split}{i:03d}.wav"
        sf.write(path, audio, RATE)
        lines.append(json.dumps({"key": path.stem, "audio": str(path), "text": text}) + "\n")
    (root / f"{split}.jsonl").write_text("".join(lines))
    return root / f"{split}.jsonl"


def test_a_small_model_learns_tone_words(tmp_path):
    rng = np.random.default_rng(0)
    train_list = write_split(tmp_path, "train", 160, rng)
    dev_list = write_split(tmp_path, "dev", 16, rng)
    data = tmp_path / "data"
    assert main(["prepare", "--train", str(train_list), "--dev", str(dev_list),
                 "--out", str(data), "--jobs", "1"]) == 0  # fmt: skip

    config = load_yaml(CONFIG)
    config["data"]["augment"] = {"speed_perturb": [1.0], "spec_aug": {"num_t_mask": 0}}
    config["data"]["features"] = {"dither": 0.0}
    config["model"]["encoder"].update(d_model=64, d_ff=128, n_heads=4, kernel_size=7)
    config["model"]["chunk"]["dynamic"] = False
    config["train"].update(max_steps=200, valid_interval=100, log_interval=50, lr=0.004)
    config["train"]["average_num"] = 1  # the last, best checkpoint: an early one would blur it
    exp = tmp_path / "exp"
    train(config, train_manifest=data / "train.jsonl", dev_manifest=data / "dev.jsonl",
          data_dir=data, exp_dir=exp, device="cpu")  # fmt: skip

    model = u2moe.load_model(exp, modes=["ctc_greedy_search"])
    errors, words = 0, 0
    for line in dev_list.read_text().splitlines():
        utterance = json.loads(line)
        hypothesis = model.transcribe(utterance["audio"]).text
        counts = word_errors(utterance["text"], hypothesis)
        errors, words = errors + counts.errors, words + counts.ref_length
    assert errors / words < 0.3, f"dev WER {errors / words:.0%} after 200 steps"
