"""The model's side of the server: one worker thread runs every model call, off the event loop.

Connections hand it jobs (a stream's audio, a stream's end, an offline transcription) and
await their results. The worker takes all jobs waiting at once as one round, so the chunks
that several streams have ready in that round are decoded together (see `_decode_round`).
"""

import asyncio
import queue
import threading
from dataclasses import dataclass, field


@dataclass
class _Job:
    stream: object | None  # a Stream, or None for a plain call
    action: object  # bytes: audio for `stream`; None: end of `stream`'s input; else a callable
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class Stream:
    """One websocket stream's decoder state (a decode.recognizer.Recognizer)."""

    recognizer: object
    results: list = field(default_factory=list)


class Engine:
    """Runs `Transcriber`-backed streams and calls in one worker thread.

    transcriber: the streaming u2moe.api.Transcriber (chunked decode settings);
    max_batch: the most streams whose chunks go through one encoder call.
    """

    def __init__(self, transcriber, max_batch: int = 32):
        self.transcriber = transcriber
        self.max_batch = max_batch
        self.rounds = 0  # rounds of jobs run
        self.batches = 0  # encoder calls over chunks of one or more streams
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="u2moe-engine", daemon=True)
        self._thread.start()

    def open_stream(self) -> Stream:
        return Stream(self.transcriber.recognizer(timestamps=True))

    async def accept(self, stream: Stream, pcm: bytes) -> list:
        """16-bit PCM bytes for `stream` -> its partial and final RecognitionResults."""
        return await self._submit(stream, bytes(pcm))

    async def finish(self, stream: Stream):
        """End of `stream`'s input -> its last final RecognitionResult."""
        return await self._submit(stream, None)

    async def call(self, fn, *args):
        """fn(*args) in the worker thread (a model call outside any stream)."""
        return await self._submit(None, lambda: fn(*args))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _submit(self, stream, action) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(_Job(stream, action, future, loop))
        return future

    def _run(self) -> None:
        while True:
            jobs = [self._jobs.get()]
            while not self._jobs.empty():
                jobs.append(self._jobs.get())
            if None in jobs:
                jobs = jobs[: jobs.index(None)]
                self._run_round(jobs)
                return
            self._run_round(jobs)

    def _run_round(self, jobs: list[_Job]) -> None:
        self.rounds += 1
        for job in jobs:
            try:
                if job.stream is None:
                    value = job.action()
                elif job.action is None:
                    value = job.stream.recognizer.finish()
                else:
                    value = job.stream.recognizer.accept_waveform(job.action)
                    self.batches += len(value)
            except Exception as e:  # the job's awaiter reports it; the worker goes on
                _settle(job, exception=e)
            else:
                _settle(job, value)


def _settle(job: _Job, value=None, exception: BaseException | None = None) -> None:
    def settle():
        if job.future.done():  # its connection went away meanwhile
            return
        if exception is not None:
            job.future.set_exception(exception)
        else:
            job.future.set_result(value)

    job.loop.call_soon_threadsafe(settle)
