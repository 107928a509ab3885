"""The model's side of the server: one worker thread runs every model call, off the event loop.

Connections hand it jobs (a stream's audio, a stream's end, an offline transcription) and
await their results. The worker takes all jobs waiting at once as one round: it feeds each
stream's audio, then decodes the chunks that the round made ready with one encoder call per
`max_batch` streams (`decode.recognizer.decode_ready_batch`), so that a MoE model reads each
expert's weights once for all of them. Every stream gets exactly what it would get alone.
"""

import asyncio
import dataclasses
import queue
import threading
from dataclasses import dataclass

from u2moe.decode.recognizer import Recognizer, decode_ready_batch
from u2moe.decode.transcriber import Transcriber


@dataclass
class _Job:
    stream: Recognizer | None  # None for a plain call
    action: object  # bytes: audio for `stream`; None: end of `stream`'s input; else a callable
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class CountingBackend:
    """A backend that counts its encoder steps and the stream chunks they carried."""

    def __init__(self, backend):
        self.backend = backend
        self.info = backend.info
        self.steps = 0
        self.chunks = 0

    def encoder_step(self, chunk, *args):
        self.steps += 1
        self.chunks += len(chunk)
        return self.backend.encoder_step(chunk, *args)

    def __getattr__(self, name):
        return getattr(self.backend, name)


class Engine:
    """Streams (decode.recognizer.Recognizer) and calls, run by one worker thread.

    transcriber: the streaming decode.transcriber.Transcriber (chunked decode settings);
    max_batch: the most streams whose chunks go through one encoder call.
    """

    def __init__(self, transcriber: Transcriber, max_batch: int = 32):
        self.backend = CountingBackend(transcriber.backend)
        self.transcriber = Transcriber(
            self.backend, transcriber.tokenizer, transcriber.data_cfg, transcriber.decode_cfg
        )
        self.max_batch = max_batch
        self.rounds = 0  # rounds of jobs run
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="u2moe-engine", daemon=True)
        self._thread.start()

    def open_stream(self, nbest: int = 1, context=None) -> Recognizer:
        """A recognizer whose finals carry an n-best of `nbest` (at most the beam) paths;
        context: a ContextGraph of hotwords for this stream."""
        recognizer = self.transcriber.recognizer(timestamps=True, context=context)
        cfg = recognizer.cfg
        recognizer.cfg = dataclasses.replace(cfg, nbest=max(1, min(nbest, cfg.beam_size)))
        return recognizer

    async def accept(self, stream: Recognizer, pcm: bytes) -> list:
        """16-bit PCM bytes for `stream` -> its partial and final RecognitionResults."""
        return await self._submit(stream, bytes(pcm))

    async def finish(self, stream: Recognizer):
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
        waiting: list[_Job] = []
        while True:
            jobs = waiting or [self._jobs.get()]
            while not self._jobs.empty():
                jobs.append(self._jobs.get())
            if None in jobs:
                self._run_round([job for job in jobs if job is not None])
                return
            # a stream's jobs run in order, one per round
            this_round, waiting, streams = [], [], set()
            for job in jobs:
                if job.stream is None or id(job.stream) not in streams:
                    this_round.append(job)
                    if job.stream is not None:
                        streams.add(id(job.stream))
                else:
                    waiting.append(job)
            self._run_round(this_round)

    def _run_round(self, jobs: list[_Job]) -> None:
        self.rounds += 1
        streaming = []
        for job in jobs:
            try:
                if job.stream is None:
                    _settle(job, job.action())
                    continue
                if job.action is None:
                    job.stream.input_finished()
                else:
                    job.stream.feed(job.action)
                streaming.append(job)
            except Exception as e:  # the job's awaiter reports it; the worker goes on
                _settle(job, exception=e)
        for first in range(0, len(streaming), self.max_batch):
            batch = streaming[first : first + self.max_batch]
            try:
                results = decode_ready_batch([job.stream for job in batch])
                for job, found in zip(batch, results, strict=True):
                    _settle(job, found if job.action is not None else job.stream.finish())
            except Exception as e:
                for job in batch:
                    _settle(job, exception=e)


def _settle(job: _Job, value=None, exception: BaseException | None = None) -> None:
    """Give the job's awaiter its value, unless its connection went away meanwhile."""

    def settle():
        if job.future.done():
            return
        if exception is not None:
            job.future.set_exception(exception)
        else:
            job.future.set_result(value)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop has closed: nobody waits any more
        pass
