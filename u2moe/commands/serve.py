"""`u2moe serve`: a streaming recognition server (WeNet's websocket protocol) and web page.

    u2moe serve --model exp/model                      # then open http://127.0.0.1:10086/
    u2moe serve --model exp/model --host 0.0.0.0 --certfile cert.pem --keyfile key.pem
    u2moe serve --onnx exp/onnx [--int8]               # an export, onnxruntime, no torch
    u2moe serve --model exp/model --top-k 1            # one MoE expert per frame

See u2moe/serve/ for the protocol, the HTTP routes and the limits. SIGTERM or Ctrl-C stops
accepting connections, sends every open stream its final result, and exits 0.
"""

import argparse
import asyncio
import dataclasses
import logging
import ssl

from u2moe.commands.arguments import positive_int
from u2moe.decode.transcriber import Transcriber
from u2moe.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory (PyTorch)")
    parser.add_argument("--onnx", metavar="EXPORT_DIR", help="an `u2moe export` directory instead")
    parser.add_argument("--int8", action="store_true", help="with --onnx: its int8 files")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=10086, help="port (0: a free one)")
    parser.add_argument(
        "--chunk-size", type=int, help="encoder frames per chunk (16; an export's own)"
    )
    parser.add_argument("--left-chunks", type=int, help="chunks of left context (4; an export's)")
    parser.add_argument("--beam-size", type=int, help="CTC prefix beam (default: the model's)")
    parser.add_argument(
        "--top-k",
        type=positive_int,
        help="MoE experts per frame (default: as trained; an export's is fixed at export)",
    )
    parser.add_argument("--max-streams", type=int, default=64, help="open streams at most")
    parser.add_argument("--max-batch", type=int, default=32, help="streams per encoder call")
    parser.add_argument("--max-message-kb", type=int, default=1024, help="websocket message")
    parser.add_argument("--idle-timeout", type=float, default=30.0, help="seconds without data")
    parser.add_argument(
        "--max-utterance-s", type=float, default=300.0, help="audio without an endpoint"
    )
    parser.add_argument("--certfile", help="TLS certificate (PEM): serve wss:// and https://")
    parser.add_argument("--keyfile", help="TLS private key (PEM) of --certfile")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    if certfile is None and keyfile is None:
        return None
    if certfile is None:
        raise UserError("--keyfile needs --certfile")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as e:
        raise UserError(f"cannot use the TLS certificate {certfile}: {e}") from None
    return context


def main(args: argparse.Namespace) -> int:
    from u2moe.serve.server import Limits, Server

    if (args.model is None) == (args.onnx is None):
        raise UserError("give a model: --model DIR or --onnx EXPORT_DIR")
    for name in ("max_streams", "max_batch", "max_message_kb", "chunk_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    options = {"chunk_size": args.chunk_size, "num_left_chunks": args.left_chunks}
    if args.onnx is None:  # a PyTorch model streams with chunk 16 and 4 left chunks by default
        options = {"chunk_size": 16, "num_left_chunks": 4} | options
    options["beam_size"] = args.beam_size
    options["top_k"] = args.top_k
    options = {k: v for k, v in options.items() if v is not None}
    tls = tls_context(args.certfile, args.keyfile)
    if args.onnx is not None:
        from u2moe.runtime import load_model

        streaming = load_model(args.onnx, args.int8, **options)
    else:
        from u2moe.api import load_model

        streaming = load_model(args.model, args.device, **options)
    full_context = dataclasses.replace(streaming.decode_cfg, chunk_size=-1, num_left_chunks=-1)
    offline = Transcriber(streaming.backend, streaming.tokenizer, streaming.data_cfg, full_context)
    limits = Limits(
        max_streams=args.max_streams,
        max_message_bytes=args.max_message_kb * 1024,
        idle_timeout_s=args.idle_timeout,
        max_utterance_s=args.max_utterance_s,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    name = args.model or args.onnx
    server = Server(streaming, offline, limits, name, max_batch=args.max_batch)
    try:
        asyncio.run(server.serve(args.host, args.port, tls))
    except OSError as e:  # the port is taken, the address is not ours, ...
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0
