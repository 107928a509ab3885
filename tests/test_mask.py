import pytest
import torch

from u2moe.model.config import ChunkConfig
from u2moe.model.mask import (
    chunk_attention_mask,
    decoding_chunk,
    make_pad_mask,
    subsequent_chunk_mask,
    subsequent_mask,
    training_chunk,
)


def test_make_pad_mask_marks_padding():
    expected = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(make_pad_mask(torch.tensor([4, 2, 1])), expected)
    assert make_pad_mask(torch.tensor([2]), max_len=4).tolist() == [[False, False, True, True]]


def test_subsequent_mask_is_lower_triangular():
    assert torch.equal(subsequent_mask(5), torch.ones(5, 5, dtype=torch.bool).tril())


def test_subsequent_chunk_mask_example():
    expected = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]],
        dtype=torch.bool,
    )
    assert torch.equal(subsequent_chunk_mask(5, 2), expected)
    # One left chunk: frame 4 (chunk 2) sees chunks 1 and 2 only.
    assert subsequent_chunk_mask(5, 2, num_left_chunks=1)[4].tolist() == [0, 0, 1, 1, 1]
    # No left chunk: each frame sees its own chunk only.
    assert torch.equal(
        subsequent_chunk_mask(4, 2, num_left_chunks=0),
        torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool),
    )


@pytest.mark.parametrize("size", [1, 7, 16])
@pytest.mark.parametrize("chunk", [1, 3, 4, 20])
@pytest.mark.parametrize("left", [-1, 0, 2])
def test_subsequent_chunk_mask_windows(size, chunk, left):
    mask = subsequent_chunk_mask(size, chunk, left)
    for i in range(size):
        start = 0 if left < 0 else max((i // chunk - left) * chunk, 0)
        end = min((i // chunk + 1) * chunk, size)
        row = torch.zeros(size, dtype=torch.bool)
        row[start:end] = True
        assert torch.equal(mask[i], row), (i, mask[i])


def test_chunk_attention_mask_combines_padding_and_chunks():
    pad = ~make_pad_mask(torch.tensor([6, 3])).unsqueeze(1)  # (2, 1, 6)
    assert chunk_attention_mask(pad, -1) is pad
    mask = chunk_attention_mask(pad, 2, 0)  # (2, 6, 6)
    assert mask.shape == (2, 6, 6)
    assert torch.equal(mask[0], subsequent_chunk_mask(6, 2, 0))
    assert mask[1, 2].tolist() == [False, False, True, False, False, False]
    assert not mask[1, 4].any()  # a padded frame whose chunk holds only padding


def test_training_chunk_static_and_disabled():
    assert training_chunk(ChunkConfig(static_chunk_size=8), 100) == (8, -1)
    assert training_chunk(ChunkConfig(dynamic=False), 100) == (-1, -1)


def draws(cfg, seed, n, num_frames=100):
    generator = torch.Generator().manual_seed(seed)
    return [training_chunk(cfg, num_frames, generator) for _ in range(n)]


def test_training_chunk_frequencies():
    cfg = ChunkConfig(dynamic=True, max_chunk=10, full_context_prob=0.3)
    result = draws(cfg, seed=0, n=4000)
    chunks = [c for c, _ in result if c != -1]
    assert 0.27 < 1 - len(chunks) / len(result) < 0.33
    assert set(chunks) == set(range(1, 11))  # uniform over [1, max_chunk], nothing else
    counts = torch.bincount(torch.tensor(chunks))[1:]
    assert counts.min() > 0.7 * len(chunks) / 10
    assert all(left == -1 for _, left in result)
    assert all(c == -1 for c, _ in draws(ChunkConfig(full_context_prob=1.0), 0, 50))
    assert -1 not in {c for c, _ in draws(ChunkConfig(full_context_prob=0.0), 0, 50)}


def test_training_chunk_is_reproducible_and_rank_independent():
    cfg = ChunkConfig(dynamic=True, max_chunk=25, dynamic_left=True)
    assert draws(cfg, seed=3, n=100) == draws(cfg, seed=3, n=100)
    assert draws(cfg, seed=3, n=100) != draws(cfg, seed=4, n=100)
    # Ranks with other batch lengths stay in step: same chunk sizes, draw after draw.
    rank0 = [c for c, _ in draws(cfg, seed=5, n=100, num_frames=40)]
    rank1 = [c for c, _ in draws(cfg, seed=5, n=100, num_frames=300)]
    assert rank0 == rank1


def test_training_chunk_dynamic_left_range():
    cfg = ChunkConfig(dynamic=True, max_chunk=4, full_context_prob=0.0, dynamic_left=True)
    result = draws(cfg, seed=1, n=2000, num_frames=13)
    for chunk, left in result:
        assert 0 <= left <= (13 - 1) // chunk
    assert {left for chunk, left in result if chunk == 1} == set(range(13))


def test_decoding_chunk():
    dynamic = ChunkConfig()
    assert decoding_chunk(dynamic, 4, 2) == (4, 2)
    assert decoding_chunk(dynamic, -1, 2) == (-1, -1)
    assert decoding_chunk(dynamic, 0, -1) == (-1, -1)
    static = ChunkConfig(dynamic=False, static_chunk_size=16)
    assert decoding_chunk(static, -1, -1) == (16, -1)
    assert decoding_chunk(static, 8, 1) == (8, 1)
