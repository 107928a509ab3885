"""The plain HTTP side of the server's port: what a request that is not a websocket gets.

    GET /            the web page (static/index.html; static/* are its other files)
    GET /healthz     JSON: model, streams open, rounds and encoder batches run
    POST /transcribe an audio file as the body -> the JSON of `u2moe transcribe --json`
                     (?timestamps=1 adds words and pieces), decoded offline, full context

websockets parses only bodiless requests, so `read_request` replaces its request parser for
the opening request of each connection: the same parsing plus a body of Content-Length bytes.
"""

import http
import json
import mimetypes
from dataclasses import dataclass
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage
from websockets.http11 import Request, Response, parse_headers, parse_line
from websockets.protocol import Protocol

STATIC = resources.files("u2moe.serve") / "static"


@dataclass
class HttpRequest(Request):
    body: bytes = b""
    too_large: bool = False  # a body over the limit was announced (and not read)


def read_request(reader, max_body: int):
    """Generator-based coroutine (websockets' reader): one HTTP request with its body."""
    line = yield from parse_line(reader.read_line)
    method, path, protocol = line.decode("ascii").split(" ", 2)
    if protocol not in ("HTTP/1.1", "HTTP/1.0"):
        raise ValueError(f"unsupported protocol {protocol!r}")
    headers = yield from parse_headers(reader.read_line)
    if "Transfer-Encoding" in headers:
        raise ValueError("transfer codings are not supported; send Content-Length")
    length = int(headers.get("Content-Length", "0"))
    request = HttpRequest(path, headers, method, protocol)
    if length > max_body:
        request.too_large = True
    elif length > 0:
        request.body = bytes((yield from reader.read_exact(length)))
    return request


def parse_with_bodies(protocol, max_body: int):
    """A replacement for websockets' ServerProtocol.parse that reads request bodies."""
    try:
        request = yield from read_request(protocol.reader, max_body)
    except Exception as e:  # as websockets does: no response, the handshake fails
        protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
        protocol.handshake_exc.__cause__ = e
        protocol.send_eof()
        protocol.parser = protocol.discard()
        next(protocol.parser)
        yield
    protocol.events.append(request)
    yield from Protocol.parse(protocol)


def respond(status: int, body: bytes, content_type: str) -> Response:
    status = http.HTTPStatus(status)
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def respond_json(status: int, value: dict) -> Response:
    body = (json.dumps(value, ensure_ascii=False) + "\n").encode()
    return respond(status, body, "application/json")


def error(status: int, message: str) -> Response:
    return respond_json(status, {"error": message})


def static_file(path: str) -> Response:
    name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
    file = STATIC / name
    if "/" in name or not file.is_file():
        return error(404, f"no page {path}")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    return respond(200, file.read_bytes(), content_type)


def transcribe_options(request: HttpRequest) -> dict:
    """Options of a POST /transcribe: timestamps, and the name to report as `file`."""
    query = parse_qs(urlsplit(request.path).query)
    return {
        "timestamps": query.get("timestamps", ["0"])[0] not in ("0", "false", ""),
        "name": query.get("name", ["upload"])[0],
    }


def is_websocket(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()
