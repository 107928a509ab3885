"""`u2moe client`: stream an audio file to a websocket server speaking WeNet's protocol
(`u2moe serve`, or WeNet's own) and print the partial and final results as they come.

    u2moe client ws://127.0.0.1:10086 a.wav                  # as fast as the server takes it
    u2moe client ws://127.0.0.1:10086 a.wav --realtime --continuous --json

Text output: `partial<TAB>text` and `final<TAB>start-end<TAB>text` lines (seconds, from the
word times); --json prints every server message as received.
"""

import argparse
import json
import threading
import time

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from u2moe.data.audio import load_audio
from u2moe.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="server address, ws://HOST:PORT or wss://HOST:PORT")
    parser.add_argument("file", help="audio file (any rate: resampled to 16 kHz)")
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per message")
    parser.add_argument("--realtime", action="store_true", help="send at the audio's pace")
    parser.add_argument("--continuous", action="store_true", help="go on after an endpoint")
    parser.add_argument("--nbest", type=int, default=1, help="hypotheses per result")
    parser.add_argument("--json", action="store_true", help="print the server's messages")


def pcm_chunks(path: str, chunk_ms: int) -> list[bytes]:
    """16-bit little-endian PCM of a file at 16 kHz, in pieces of `chunk_ms`."""
    samples = load_audio(path)
    pcm = (np.clip(samples, -1, 32767 / 32768) * 32768).round().astype("<i2").tobytes()
    step = 32 * chunk_ms
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def describe(message: dict) -> str | None:
    """A line for a partial or final result; None for the other messages."""
    kind = message.get("type")
    if kind not in ("partial_result", "final_result"):
        return None
    paths = json.loads(message["nbest"])
    text = paths[0]["sentence"] if paths else ""
    if kind == "partial_result":
        return f"partial\t{text}"
    words = paths[0].get("word_pieces", []) if paths else []
    span = f"{words[0]['start'] / 1000:.2f}-{words[-1]['end'] / 1000:.2f}" if words else "-"
    return f"final\t{span}\t{text}"


def main(args: argparse.Namespace) -> int:
    if args.chunk_ms < 1:
        raise UserError("--chunk-ms must be at least 1")
    chunks = pcm_chunks(args.file, args.chunk_ms)
    try:
        websocket = connect(args.url, open_timeout=10, max_size=None)
    except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as e:
        raise UserError(f"cannot connect to {args.url}: {e}") from None
    with websocket:
        start = {"signal": "start", "nbest": args.nbest, "continuous_decoding": args.continuous}
        websocket.send(json.dumps(start))
        failure = []
        reader = threading.Thread(target=_print_messages, args=(websocket, args.json, failure))
        reader.start()
        try:
            for chunk in chunks:
                websocket.send(chunk)
                if args.realtime:
                    time.sleep(args.chunk_ms / 1000)
            websocket.send(json.dumps({"signal": "end"}))
        except ConnectionClosed:
            pass  # the server ended the stream (an endpoint without --continuous, or a failure)
        reader.join()
    if failure:
        raise UserError(f"the server failed the stream: {failure[0]}")
    return 0


def _print_messages(websocket, raw: bool, failure: list) -> None:
    try:
        for text in websocket:
            message = json.loads(text)
            if raw:
                print(text, flush=True)
            elif (line := describe(message)) is not None:
                print(line, flush=True)
            if message.get("status") == "failed":
                failure.append(message.get("message", ""))
            if message.get("type") == "speech_end" or failure:
                break
    except ConnectionClosed:
        pass
