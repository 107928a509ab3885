"""Helpers of the serving tests: a tiny model directory, test speech, a server in a thread,
and a websocket client that streams PCM and collects the server's messages."""

import asyncio
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from u2moe.api import Transcriber, load_model
from u2moe.config import parse_section
from u2moe.model.config import ModelConfig
from u2moe.model.io import save_model_dir
from u2moe.model.u2 import U2Model
from u2moe.serve.server import Limits, Server

UNITS = ["<blank>", "<unk>", "a", "b", "c", "d", "e", "\u2581", "<sos/eos>"]
CHUNK = 4  # encoder frames per chunk in these tests
# silence (zeros) after the test speech gives this random model blank probabilities over 0.3
ENDPOINT = {"blank_threshold": 0.3, "silence_after_speech_ms": 400, "silence_before_speech_ms": 400}


def make_model_dir(root: Path, ffn: dict | None = None) -> Path:
    """A random tiny model whose CTC head is peaky (no near-ties), endpoints off; ffn: the
    FFN section of encoder and decoder (dense by default)."""
    torch.manual_seed(0)
    encoder = {"d_model": 32, "n_heads": 2, "d_ff": 48, "n_layers": 2, "kernel_size": 5}
    decoder = {"n_heads": 2, "d_ff": 48, "n_layers": 1, "n_r2l_layers": 1}
    if ffn is not None:
        encoder["ffn"] = decoder["ffn"] = ffn
    sections = {"vocab_size": len(UNITS), "encoder": encoder, "decoder": decoder}
    model = U2Model(parse_section(ModelConfig, sections, "model")).eval()
    with torch.no_grad():  # peaky CTC posteriors, as trained models have
        model.ctc.ctc_lo.weight.mul_(8.0)
    model.set_cmvn(torch.full((80,), 8.0), torch.full((80,), 0.25))
    decode = {"modes": ["attention_rescoring"], "beam_size": 3, "endpoint": {"enabled": False}}
    save_model_dir(root / "model", model, {"data": {}, "decode": decode}, UNITS)
    return root / "model"


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Int16 samples: tones that glide and pulse, with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    pitch = 150 + 30 * seed + 80 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    wave = 0.2 * wave + 0.01 * rng.standard_normal(len(t))
    return (wave * 32767 / np.abs(wave).max() * 0.5).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    sf.write(path, samples, 16000, subtype="PCM_16")
    return path


def transcribers(model_dir: Path, **decode) -> tuple[Transcriber, Transcriber]:
    """(streaming with CHUNK, full context) as `u2moe serve` builds them."""
    streaming = load_model(model_dir, chunk_size=CHUNK, num_left_chunks=-1, **decode)
    offline = load_model(model_dir, chunk_size=-1, num_left_chunks=-1, **decode)
    return streaming, offline


class RunningServer:
    """`Server.serve` on a free loopback port, in a thread with its own event loop."""

    def __init__(
        self, model_dir: Path, limits: Limits | None = None, max_batch=32, tls=None, **decode
    ):
        streaming, offline = transcribers(model_dir, **decode)
        self.server = Server(streaming, offline, limits, str(model_dir), max_batch=max_batch)
        started = threading.Event()
        self.loop = asyncio.new_event_loop()

        def run():
            self.loop.run_until_complete(
                self.server.serve("127.0.0.1", 0, tls, ready=lambda port: started.set())
            )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(30), "the server did not start"
        self.url = f"ws://127.0.0.1:{self.server.port}"
        self.http_url = f"http://127.0.0.1:{self.server.port}"
        self.https_url = f"https://127.0.0.1:{self.server.port}"
        self.wss_url = f"wss://127.0.0.1:{self.server.port}"

    def get(self, path: str, data: bytes | None = None) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.http_url + path, data, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def health(self) -> dict:
        return json.loads(self.get("/healthz")[1])

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop"


def serve_process(*options: str) -> tuple[subprocess.Popen, str]:
    """`u2moe serve OPTIONS --port 0` in a subprocess, and the ws:// address it serves."""
    command = [sys.executable, "-m", "u2moe", "serve", *options, "--port", "0"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in server.stderr:  # the log says where it listens
        if "serving on " in line:
            threading.Thread(target=server.stderr.read, daemon=True).start()  # keep it flowing
            return server, line.split("serving on ")[1].strip()
    server.kill()
    raise AssertionError(f"u2moe serve {' '.join(options)} did not start")


def stream(url: str, samples, piece_samples: int = 1600, start: dict | None = None):
    """Stream int16 samples in pieces, then the end signal; the server's messages (dicts)."""
    start = {"signal": "start", "nbest": 1, "continuous_decoding": False} | (start or {})
    with connect(url, open_timeout=30) as ws:
        ws.send(json.dumps(start))
        messages = [json.loads(ws.recv(timeout=30))]
        pcm = np.asarray(samples, dtype="<i2").tobytes()
        step = 2 * piece_samples
        try:
            for i in range(0, len(pcm), step):
                ws.send(pcm[i : i + step])
            ws.send(json.dumps({"signal": "end"}))
        except ConnectionClosed:
            pass
        return messages + receive_all(ws)


def receive_all(ws) -> list[dict]:
    """The messages until the server closes the connection."""
    messages = []
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=30)))
    except ConnectionClosed:
        return messages


def finals(messages: list[dict]) -> list[dict]:
    """The first path of each final_result, parsed."""
    return [json.loads(m["nbest"])[0] for m in messages if m.get("type") == "final_result"]
