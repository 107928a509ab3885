"""WeNet's websocket protocol (runtime/core/websocket in WeNet), as JSON text messages.

client -> server: `{"signal": "start", "nbest": N, "continuous_decoding": bool}` (u2moe also
reads `"context": [phrases]` and `"context_score": S`, hotwords for the stream), then binary
frames of 16-bit little-endian PCM at 16 kHz, then `{"signal": "end"}`.
server -> client: `{"status": "ok", "type": "server_ready"}`; `partial_result` and
`final_result`, whose `nbest` is a JSON *string* of `[{"sentence": ...}]` (finals add
`word_pieces`: `[{"word", "start", "end"}]` in milliseconds from the start of the stream);
`{"status": "ok", "type": "speech_end"}`; errors `{"status": "failed", "message": ...}`,
after which the server closes the connection.
"""

import json
from dataclasses import dataclass


class ProtocolError(Exception):
    """A message the protocol does not allow; its text is the `failed` message."""


@dataclass
class Start:
    nbest: int = 1
    continuous_decoding: bool = False
    # u2moe's extension: hotwords for this stream (lines as in a --context file)
    context: list[str] | None = None
    context_score: float = 2.0


@dataclass
class End:
    pass


def parse_text(message: str) -> Start | End:
    """A client's text message -> Start or End; ProtocolError with WeNet's wording otherwise."""
    try:
        value = json.loads(message)
    except ValueError:
        raise ProtocolError("Wrong protocol: the message is not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("Wrong protocol: a JSON object is expected")
    if "signal" not in value:
        raise ProtocolError("Wrong message header: no signal")
    signal = value["signal"]
    if signal == "end":
        return End()
    if signal != "start":
        raise ProtocolError("Unexpected signal type")
    start = Start()
    if "nbest" in value:
        nbest = value["nbest"]
        if type(nbest) is not int or nbest < 1:
            raise ProtocolError("integer is expected for nbest option")
        start.nbest = nbest
    if "continuous_decoding" in value:
        if not isinstance(value["continuous_decoding"], bool):
            raise ProtocolError("boolean true or false is expected for continuous_decoding option")
        start.continuous_decoding = value["continuous_decoding"]
    if "context" in value:
        phrases = value["context"]
        if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            raise ProtocolError("a list of strings is expected for context option")
        start.context = phrases
    if "context_score" in value:
        score = value["context_score"]
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ProtocolError("a number is expected for context_score option")
        start.context_score = float(score)
    return start


def _message(**fields) -> str:
    return json.dumps(fields, ensure_ascii=False)


def server_ready() -> str:
    return _message(status="ok", type="server_ready")


def speech_end() -> str:
    return _message(status="ok", type="speech_end")


def failed(message: str) -> str:
    return _message(status="failed", message=message)


def result(result, nbest: int) -> str:
    """A partial_result or final_result message of a decode.recognizer.RecognitionResult.

    A partial holds the best path; a final its rescored n-best (`result.nbest`, at most
    `nbest` paths, as WeNet sends), the best path with its words' times in ms."""
    path = {"sentence": result.text}
    paths = [path]
    if result.final:
        path["word_pieces"] = [
            {"word": w.text, "start": round(w.start * 1000), "end": round(w.end * 1000)}
            for w in result.words or []
        ]
        paths += [{"sentence": text} for text, _ in (result.nbest or [])[1:]]
    kind = "final_result" if result.final else "partial_result"
    return _message(status="ok", type=kind, nbest=json.dumps(paths[:nbest], ensure_ascii=False))
