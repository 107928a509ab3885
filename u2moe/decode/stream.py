"""The streaming state of one audio stream's encoder, and one backend call for many streams.

    stream = EncoderStream(backend.info, chunk_size=16, num_left_chunks=4)
    stream.accept_feats(frames)              # fbank frames (n, feature_dim) as they come
    while (out := stream.step(backend)) is not None:
        ...                                  # encoder frames (t, d) of one chunk
    stream.reset()                           # at an endpoint: a new utterance, same audio
    stream.input_finished()                  # then step() also runs the last, shorter chunk

`EncoderStream` owns everything streaming needs between chunks: the fbank frames not yet
consumed, the chunk windows (`u2moe.model.window.ChunkWindows`), the offset (encoder frames
emitted in this utterance), the attention and convolution caches of one stream
(att_cache (num_blocks, n_heads, C, 2 * d_k), cnn_cache (num_blocks, d, cnn_cache_frames),
numpy float32) and the attention cache size to keep. `encoder_step_batch(backend, streams)`
runs the ready chunk of several streams in one backend call: their caches are left-padded
with zeros to a common length and att_mask marks the real slots, so each stream gets what it
would get alone (equal up to float rounding). Torch-free: the ONNX runtime shares it.
"""

from collections import defaultdict

import numpy as np

from u2moe.model.window import ChunkWindows


def stream_windows(info, chunk_size: int, num_left_chunks: int) -> ChunkWindows:
    """The chunking a decode asks for; without a chunk size (<= 0) a static-chunk model
    decodes with its own chunk (and left chunks, unless asked otherwise), any other model
    with full context."""
    if chunk_size <= 0 and info.chunk_size > 0:
        chunk_size = info.chunk_size
        num_left_chunks = num_left_chunks if num_left_chunks >= 0 else info.num_left_chunks
    elif chunk_size <= 0:
        num_left_chunks = -1
    return ChunkWindows(chunk_size, info.subsampling_rate, info.right_context, num_left_chunks)


class EncoderStream:
    """One stream's encoder state (module docstring); `info` is the backend's ModelInfo."""

    def __init__(self, info, chunk_size: int = -1, num_left_chunks: int = -1):
        self.info = info
        self.windows = stream_windows(info, chunk_size, num_left_chunks)
        self.feats = np.zeros((0, info.feature_dim), dtype=np.float32)  # not yet consumed
        self.consumed = 0  # fbank frames of the stream dropped from `feats`
        self.end_of_input = False
        self.reset()

    def reset(self) -> None:
        """Start a new utterance at the next frame not yet consumed: offset and caches
        empty, the fbank frames kept."""
        info = self.info
        self.utterance_start = self.consumed  # fbank frame where this utterance begins
        self.offset = 0  # encoder frames emitted in this utterance
        self.att_cache = np.zeros((info.num_blocks, info.n_heads, 0, 2 * info.d_k), np.float32)
        self.cnn_cache = np.zeros(
            (info.num_blocks, info.output_size, info.cnn_cache_frames), np.float32
        )

    def accept_feats(self, frames: np.ndarray) -> None:
        """Append fbank frames (n, feature_dim)."""
        if len(frames):
            self.feats = np.concatenate([self.feats, np.asarray(frames, dtype=np.float32)])

    def input_finished(self) -> None:
        """No more frames: what is left becomes one last, shorter chunk."""
        self.end_of_input = True

    def ready(self) -> bool:
        """Whether a chunk can run now."""
        return self.windows.next_chunk(len(self.feats), self.end_of_input) is not None

    def take_chunk(self) -> np.ndarray:
        """The fbank window (W, feature_dim) of the next chunk, consumed from the buffer
        (all but the look-ahead that the next window shares)."""
        width, step = self.windows.next_chunk(len(self.feats), self.end_of_input)
        chunk = self.feats[:width]
        self.feats = self.feats[step:]
        self.consumed += step
        return chunk

    def step(self, backend) -> np.ndarray | None:
        """Run the next chunk alone: its encoder frames (t, d), or None if none is ready."""
        return encoder_step_batch(backend, [self])[0]

    def encode_all(self, backend) -> np.ndarray:
        """Run every ready chunk: the encoder frames (t, d) of all of them."""
        outputs = []
        while (out := self.step(backend)) is not None:
            outputs.append(out)
        if not outputs:
            return np.zeros((0, self.info.output_size), dtype=np.float32)
        return np.concatenate(outputs)


def encoder_step_batch(backend, streams: list[EncoderStream]) -> list[np.ndarray | None]:
    """Run the next chunk of every ready stream: per stream its encoder frames (t, d), None
    for a stream without a ready chunk. Ready streams whose windows have the same length and
    cache limit share one backend call (normally all of them; a last, shorter chunk or a
    different left-chunk setting goes in a call of its own)."""
    groups = defaultdict(list)
    for i, stream in enumerate(streams):
        if stream.ready():
            chunk = stream.take_chunk()
            groups[len(chunk), stream.windows.required_cache_size].append((i, stream, chunk))
    outputs: list[np.ndarray | None] = [None] * len(streams)
    for (width, required_cache_size), group in groups.items():
        members = [stream for _, stream, _ in group]
        chunks = np.stack([chunk for _, _, chunk in group])
        t = group[0][1].windows.output_frames(width)
        att_cache, att_mask = padded_att_caches(members, t)
        out, att_cache, cnn_cache = backend.encoder_step(
            chunks,
            np.array([stream.offset for stream in members], dtype=np.int64),
            required_cache_size,
            att_cache,
            np.stack([stream.cnn_cache for stream in members]),
            att_mask,
        )
        for b, (i, stream, _) in enumerate(group):
            real = stream.att_cache.shape[2] + t
            if required_cache_size >= 0:
                real = min(real, required_cache_size)
            stream.att_cache = att_cache[b, :, :, att_cache.shape[3] - real :]
            stream.cnn_cache = cnn_cache[b]
            stream.offset += t
            outputs[i] = out[b]
    return outputs


def padded_att_caches(streams: list[EncoderStream], t: int) -> tuple[np.ndarray, np.ndarray]:
    """The streams' attention caches left-padded with zeros to the longest, (B, num_blocks,
    n_heads, C, 2 d_k), and att_mask (B, 1, C + t): True at real cache slots and new frames."""
    if len(streams) == 1:  # nothing to pad: no copy of a possibly long cache
        cache = streams[0].att_cache
        return cache[None], np.ones((1, 1, cache.shape[2] + t), dtype=bool)
    lengths = [stream.att_cache.shape[2] for stream in streams]
    longest = max(lengths)
    blocks, heads, _, width = streams[0].att_cache.shape
    att_cache = np.zeros((len(streams), blocks, heads, longest, width), dtype=np.float32)
    att_mask = np.ones((len(streams), 1, longest + t), dtype=bool)
    for b, (stream, length) in enumerate(zip(streams, lengths, strict=True)):
        att_cache[b, :, :, longest - length :] = stream.att_cache
        att_mask[b, :, : longest - length] = False
    return att_cache, att_mask
