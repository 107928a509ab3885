"""How streaming cuts fbank frames into encoder chunks: the one place of that arithmetic.

Torch-free (plain ints), so the encoder's `forward_chunk_by_chunk`, the stream object
(`u2moe.decode.stream`) and the ONNX runtime share it.

A chunk of `chunk_size` encoder frames reads a window of
(chunk_size - 1) * subsampling_rate + right_context + 1 fbank frames; consecutive windows
start chunk_size * subsampling_rate frames apart (they overlap by the look-ahead). At the
end of input what is left (at least right_context + 1 frames, one encoder frame's worth)
is one last, shorter chunk. Without a chunk size (full context) the whole input is one
chunk at its end.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkWindows:
    chunk_size: int  # encoder frames per chunk; <= 0: full context, one chunk at the end
    subsampling_rate: int
    right_context: int  # fbank frames an encoder frame reads past its first one
    num_left_chunks: int = -1  # chunks of attention cache kept; -1: all

    @property
    def context(self) -> int:
        """Fbank frames one encoder frame needs."""
        return self.right_context + 1

    @property
    def window(self) -> int:
        """Fbank frames of a full chunk (0 without a chunk size)."""
        return (self.chunk_size - 1) * self.subsampling_rate + self.context if self.streaming else 0

    @property
    def stride(self) -> int:
        """Fbank frames between the starts of consecutive chunks."""
        return self.chunk_size * self.subsampling_rate

    @property
    def streaming(self) -> bool:
        return self.chunk_size > 0

    @property
    def required_cache_size(self) -> int:
        """Encoder frames of attention cache kept between chunks (< 0: all)."""
        return self.chunk_size * self.num_left_chunks if self.num_left_chunks >= 0 else -1

    def next_chunk(self, available: int, end_of_input: bool) -> tuple[int, int] | None:
        """(fbank frames the next chunk reads, frames it consumes) out of `available`
        buffered frames, or None when no chunk is ready yet."""
        if self.streaming and available >= self.window:
            return self.window, self.stride
        if end_of_input and available >= self.context:
            return available, available  # the last, shorter chunk
        return None

    def output_frames(self, num_frames: int) -> int:
        """Encoder frames that a window of num_frames fbank frames gives (the convolution
        stacks of every subsampling rate floor the same way)."""
        if num_frames < self.context:
            return 0
        return (num_frames - self.context) // self.subsampling_rate + 1

    def chunks(self, num_frames: int) -> list[tuple[int, int]]:
        """(start, end) fbank frames of every chunk of a whole input of num_frames frames."""
        spans, start = [], 0
        while (step := self.next_chunk(num_frames - start, end_of_input=True)) is not None:
            spans.append((start, start + step[0]))
            start += step[1]
        return spans
