"""The websocket server: one connection per stream, WeNet's protocol, limits and shutdown.

    server = Server(transcriber, offline, Limits(max_streams=64), model_name="exp/model")
    asyncio.run(server.serve("127.0.0.1", 10086))     # until SIGTERM / SIGINT or stop()

Each connection is a Session: text messages are WeNet's signals (protocol.py), binary ones
its audio, decoded by the shared Engine. Any error ends only its own session: the client
gets `{"status": "failed", "message": ...}` and the connection closes.
"""

import asyncio
import contextlib
import functools
import logging
import os
import signal
import tempfile
from dataclasses import dataclass

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from u2moe.decode.context import ContextGraph
from u2moe.errors import UserError
from u2moe.serve import protocol, routes
from u2moe.serve.engine import Engine

log = logging.getLogger("u2moe.serve")
BYTES_PER_SECOND = 32000  # 16-bit samples at 16 kHz


@dataclass
class Limits:
    max_streams: int = 64  # open websocket streams; one more is refused
    max_message_bytes: int = 1 << 20  # a larger websocket message closes the connection (1009)
    idle_timeout_s: float = 30.0  # no message for this long: the stream fails
    max_utterance_s: float = 300.0  # audio since the last final; longer: the stream fails
    max_upload_bytes: int = 64 << 20  # body of POST /transcribe


class SessionError(Exception):
    """Ends one session with a `failed` message (the exception's text)."""


class Session:
    def __init__(self, connection: ServerConnection, engine: Engine):
        self.connection = connection
        self.engine = engine
        self.start: protocol.Start | None = None
        self.stream = None
        self.received_s = 0.0  # seconds of audio received
        self.utterance_start_s = 0.0  # where the current utterance began (the last final's end)
        self.done = False
        self.lock = asyncio.Lock()  # one message (or the shutdown's flush) at a time

    async def send_results(self, results) -> None:
        for result in results:
            await self.connection.send(protocol.result(result, self.start.nbest))
            if result.final:
                self.utterance_start_s = result.end
                if not self.start.continuous_decoding:
                    await self.end()
                    return

    async def end(self) -> None:
        await self.connection.send(protocol.speech_end())
        self.done = True

    async def on_text(self, message: str) -> None:
        request = protocol.parse_text(message)
        if isinstance(request, protocol.Start):
            if self.start is not None:
                raise SessionError("Unexpected start signal: the stream has started")
            self.start = request
            context = None
            if request.context is not None:
                try:
                    context = ContextGraph.from_phrases(
                        request.context, self.engine.transcriber.tokenizer, request.context_score
                    )
                except UserError as e:
                    raise SessionError(str(e)) from None
            self.stream = self.engine.open_stream(self.start.nbest, context)
            await self.connection.send(protocol.server_ready())
        elif self.start is None:
            raise SessionError("Start signal is expected before end signal")
        else:
            await self.flush()

    async def on_audio(self, pcm: bytes, limits: Limits) -> None:
        if self.start is None:
            raise SessionError("Start signal is expected before binary data")
        self.received_s += len(pcm) / BYTES_PER_SECOND
        if self.received_s - self.utterance_start_s > limits.max_utterance_s:
            raise SessionError(
                f"utterance longer than {limits.max_utterance_s:g} s without an endpoint "
                "(the server's --max-utterance-s)"
            )
        await self.send_results(await self.engine.accept(self.stream, pcm))

    async def flush(self) -> None:
        """End of input: the last final, then speech_end."""
        final = await self.engine.finish(self.stream)
        await self.connection.send(protocol.result(final, self.start.nbest))
        await self.end()


class Server:
    """transcriber: the streaming u2moe.api.Transcriber; offline: the same model with full
    context, for POST /transcribe."""

    def __init__(self, transcriber, offline, limits: Limits | None = None, model_name="", **kw):
        self.limits = limits or Limits()
        self.offline = offline
        self.model_name = model_name
        self.engine = Engine(transcriber, **kw)
        self.sessions: set[Session] = set()
        self.stopping = False
        self._stop = asyncio.Event()
        self.port: int | None = None

    async def serve(self, host: str, port: int, ssl=None, ready=None) -> None:
        """Serve until stop() or SIGTERM/SIGINT; then finish the open streams and return.
        ready(port) is called once the port listens (port 0: a free one)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(RuntimeError, ValueError):  # not the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        create_connection = functools.partial(_connection, max_body=self.limits.max_upload_bytes)
        try:
            async with websockets.serve(
                self.handle,
                host,
                port,
                ssl=ssl,
                process_request=self.process_request,
                create_connection=create_connection,
                max_size=self.limits.max_message_bytes,
                open_timeout=600,  # the handshake includes a POST /transcribe's decoding
                logger=log,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                log.info("serving on %s://%s:%d", "wss" if ssl else "ws", host, self.port)
                if ready is not None:
                    ready(self.port)
                await self._stop.wait()
                self.stopping = True
                server.close(close_connections=False)  # no new connections
                await asyncio.gather(*(self.drain(s) for s in list(self.sessions)))
                await server.wait_closed()
        finally:
            self.engine.close()

    def stop(self) -> None:
        self._stop.set()

    async def drain(self, session: Session) -> None:
        """At shutdown: an open stream gets its final and speech_end, then is closed."""
        async with session.lock:
            with contextlib.suppress(ConnectionClosed):
                if session.start is not None and not session.done:
                    await session.flush()
                session.done = True
                await session.connection.close(1001, "server shutting down")

    async def handle(self, connection: ServerConnection) -> None:
        if len(self.sessions) >= self.limits.max_streams or self.stopping:
            with contextlib.suppress(ConnectionClosed):
                await connection.send(
                    protocol.failed(
                        f"server busy: {len(self.sessions)} streams open, the most it serves "
                        f"(--max-streams {self.limits.max_streams}); try again later"
                    )
                )
                await connection.close(1013, "server busy")
            return
        session = Session(connection, self.engine)
        self.sessions.add(session)
        try:
            await self.converse(session)
        finally:
            self.sessions.discard(session)

    async def converse(self, session: Session) -> None:
        connection = session.connection
        try:
            while not session.done:
                try:
                    async with asyncio.timeout(self.limits.idle_timeout_s):
                        message = await connection.recv()
                except TimeoutError:
                    raise SessionError(
                        f"no message for {self.limits.idle_timeout_s:g} s (idle timeout)"
                    ) from None
                async with session.lock:
                    if session.done:
                        break
                    if isinstance(message, str):
                        await session.on_text(message)
                    else:
                        await session.on_audio(message, self.limits)
            await connection.close()
        except ConnectionClosed:
            pass  # the client went away: its stream is dropped with its session
        except (SessionError, protocol.ProtocolError) as e:
            await self.fail(session, str(e))
        except Exception as e:  # a bug or a model error: this session fails, the server goes on
            log.exception("stream failed")
            await self.fail(session, f"internal error: {type(e).__name__}: {e}")

    async def fail(self, session: Session, message: str) -> None:
        session.done = True
        with contextlib.suppress(ConnectionClosed):
            await session.connection.send(protocol.failed(message))
            await session.connection.close()

    async def process_request(self, connection, request: routes.HttpRequest):
        """Plain HTTP requests (routes.py); None lets a websocket handshake go on."""
        path = request.path.split("?")[0]
        if request.method == "GET" and routes.is_websocket(request):
            return None
        if request.method == "GET" and path == "/healthz":
            return routes.respond_json(200, self.health())
        if request.method == "GET":
            return routes.static_file(path)
        if request.method == "POST" and path == "/transcribe":
            return await self.transcribe(request)
        return routes.error(405 if path == "/transcribe" else 404, f"no {request.method} {path}")

    def health(self) -> dict:
        return {
            "status": "ok",
            "model": self.model_name,
            "streams": len(self.sessions),
            "max_streams": self.limits.max_streams,
            "rounds": self.engine.rounds,
            "batches": self.engine.backend.steps,  # encoder calls
            "batched_chunks": self.engine.backend.chunks,  # stream chunks they carried
            "max_batch": self.engine.max_batch,
        }

    async def transcribe(self, request: routes.HttpRequest):
        if request.too_large:
            limit = self.limits.max_upload_bytes
            return routes.error(413, f"audio larger than {limit} bytes")
        if not request.body:
            return routes.error(400, "no audio: POST the audio file as the request body")
        options = routes.transcribe_options(request)
        with tempfile.TemporaryDirectory(prefix="u2moe-serve-") as tmp:
            path = os.path.join(tmp, "upload")
            with open(path, "wb") as f:
                f.write(request.body)
            try:
                result = await self.engine.call(
                    self.offline.transcribe, path, options["timestamps"]
                )
            except UserError as e:
                return routes.error(400, str(e).replace(path, options["name"]))
        return routes.respond_json(200, {"file": options["name"], **result.as_dict()})


def _connection(protocol_, server, max_body: int, **kwargs) -> ServerConnection:
    """A websocket connection whose opening request may carry a body (routes.py)."""
    protocol_.parser = routes.parse_with_bodies(protocol_, max_body)
    next(protocol_.parser)
    return ServerConnection(protocol_, server, **kwargs)
