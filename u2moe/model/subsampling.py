"""Conv2d front end: fbank frames -> encoder frames at 1/4, 1/6 or 1/8 the frame rate.

WeNet's Conv2dSubsampling{4,6,8}: stride-2/3 convolutions with ReLU over (time, mel),
then a linear layer to d_model and the positional encoding. Parameter names match WeNet:
conv.0, conv.2 (conv.4 for x8), out.0, pos_enc.
"""

import torch
from torch import nn

from u2moe.model.embedding import PositionalEncoding

# (kernel, stride) of each convolution, per subsampling rate.
_LAYERS = {4: ((3, 2), (3, 2)), 6: ((3, 2), (5, 3)), 8: ((3, 2), (3, 2), (3, 2))}


class Conv2dSubsampling(nn.Module):
    """x (B, T, idim) -> (B, T', odim), T' = the output length of the stacked convolutions.

    `subsampling_rate` input frames advance one output frame; an output frame reads
    `right_context` input frames past the first one it covers.
    """

    def __init__(self, idim: int, odim: int, rate: int, pos_enc: PositionalEncoding):
        super().__init__()
        if rate not in _LAYERS:
            raise ValueError(f"subsampling rate must be one of {sorted(_LAYERS)}, got {rate}")
        self.layers = _LAYERS[rate]
        convs, channels, freq = [], 1, idim
        for kernel, stride in self.layers:
            convs += [nn.Conv2d(channels, odim, kernel, stride), nn.ReLU()]
            channels, freq = odim, (freq - kernel) // stride + 1
        self.conv = nn.Sequential(*convs)
        self.out = nn.Sequential(nn.Linear(odim * freq, odim))
        self.pos_enc = pos_enc
        self.subsampling_rate = rate
        self.right_context, step = 0, 1
        for kernel, stride in self.layers:
            self.right_context += (kernel - 1) * step
            step *= stride

    def output_length(self, length: int) -> int:
        """Encoder frames made from `length` input frames (0 if too short)."""
        for kernel, stride in self.layers:
            length = max((length - kernel) // stride + 1, 0)
        return length

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, offset: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (B, T, idim), mask (B, 1, T) or None -> (x (B, T', d), pos_emb (1, T', d), mask).

        `offset` is the position of the first output frame (streaming).
        """
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.size()
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        x, pos_emb = self.pos_enc(x, offset)
        if mask is not None:
            for kernel, stride in self.layers:
                mask = mask[:, :, kernel - 1 :: stride]
        return x, pos_emb, mask
