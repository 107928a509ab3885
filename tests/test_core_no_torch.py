"""The torch-free core imports and decodes in a process where `import torch` fails."""

import subprocess
import sys
import textwrap

CORE = [
    "u2moe.backends",
    "u2moe.data.audio",
    "u2moe.data.features",
    "u2moe.data.tokenizer",
    "u2moe.decode.batch",
    "u2moe.decode.endpoint",
    "u2moe.decode.lexicon",
    "u2moe.decode.recognizer",
    "u2moe.decode.search",
    "u2moe.decode.stream",
    "u2moe.decode.timestamps",
    "u2moe.decode.transcriber",
    "u2moe.model.window",
]

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test ({name})")

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
        raise SystemExit("torch imported despite the blocker")
    except ImportError:
        pass
    for name in MODULES:
        importlib.import_module(name)

    import numpy as np
    from u2moe.backends import ModelInfo
    from u2moe.data.config import DataConfig
    from u2moe.data.tokenizer import Tokenizer
    from u2moe.decode.config import DecodeConfig
    from u2moe.decode.transcriber import Transcriber

    class NumpyBackend:
        '''A stand-in model: encoder frames are projected fbank windows, token 2 wins
        where the first projected channel is high.'''

        info = ModelInfo(
            subsampling_rate=4, right_context=6, num_blocks=1, n_heads=1, d_k=2,
            output_size=4, cnn_cache_frames=0, vocab_size=5, sos=4, eos=4,
            has_right_decoder=False, feature_dim=80,
        )

        def __init__(self):
            self.weight = np.random.default_rng(0).standard_normal((80, 4)).astype(np.float32)

        def encoder_step(self, chunk, offset, required, att_cache, cnn_cache, att_mask):
            t = (chunk.shape[1] - 7) // 4 + 1
            out = np.stack([chunk[:, 4 * i : 4 * i + 7].mean(1) for i in range(t)], 1)
            return out @ self.weight, att_cache[:, :, :, :0], cnn_cache

        def encode(self, feats, lengths, chunk_size=-1, num_left_chunks=-1):
            t = (feats.shape[1] - 7) // 4 + 1
            out = np.stack([feats[:, 4 * i : 4 * i + 7].mean(1) for i in range(t)], 1)
            return out @ self.weight, (np.asarray(lengths) - 7) // 4 + 1

        def ctc_log_probs(self, enc):
            logits = np.zeros(enc.shape[:2] + (5,), np.float32)
            logits[..., 0] = 1.0
            logits[..., 2] = 3.0 * np.tanh(enc[..., 0])
            return logits - np.log(np.exp(logits).sum(-1, keepdims=True))

        def decoder_scores(self, enc, enc_length, hyps):
            return -np.array([len(h) for h in hyps], float), np.zeros(len(hyps))

    units = ["<blank>", "<unk>", "a", "\\u2581", "<sos/eos>"]
    cfg = DecodeConfig(reverse_weight=0.0, chunk_size=4, beam_size=3)
    transcriber = Transcriber(NumpyBackend(), Tokenizer(units), DataConfig(), cfg)
    rng = np.random.default_rng(1)
    samples = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    whole = transcriber.transcribe(samples, timestamps=True)
    recognizer = transcriber.recognizer()
    partials = recognizer.accept_waveform(samples)
    assert partials and not any(r.final for r in partials)
    assert recognizer.finish().tokens == whole.tokens and whole.words is not None
    assert "torch" not in sys.modules
    print("ok", len(whole.tokens))
    """
)


def test_core_imports_and_decodes_without_torch():
    script = f"MODULES = {CORE!r}\n" + SCRIPT
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
