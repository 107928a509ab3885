"""The Conformer convolution module (WeNet's ConvolutionModule, same parameter names).

pointwise_conv1 -> GLU -> depthwise_conv -> LayerNorm or BatchNorm -> activation ->
pointwise_conv2. Causal: the depthwise convolution sees only past frames (left padding of
kernel-1 frames); in streaming those frames come from a cache instead of zeros.
Non-causal: symmetric padding, odd kernel. Padded frames are zeroed before and after.
As in WeNet, padding (left padding, and in a batch the frames past an utterance's end)
is zeroed before pointwise_conv1, so the depthwise convolution sees GLU of its bias there.
"""

import torch
import torch.nn.functional as F
from torch import nn


class ConvolutionModule(nn.Module):
    """x (B, T, d) -> (B, T, d)."""

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        activation: nn.Module,
        norm: str = "layer_norm",
        causal: bool = True,
    ):
        super().__init__()
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"a non-causal convolution needs an odd kernel, got {kernel_size}")
        self.lorder = kernel_size - 1 if causal else 0  # frames of left context to pad/cache
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise_conv = nn.Conv1d(
            channels,
            channels,
            kernel_size,
            padding=0 if causal else (kernel_size - 1) // 2,
            groups=channels,
        )
        self.use_layer_norm = norm == "layer_norm"
        self.norm = nn.LayerNorm(channels) if self.use_layer_norm else nn.BatchNorm1d(channels)
        self.activation = activation
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        mask_pad: torch.Tensor | None = None,
        cache: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """mask_pad (B, 1, T) True at real frames, or None.

        cache (B, d, lorder): the module's input of the previous lorder frames, or an empty
        tensor (size 0 in its last dimension) at the start; new_cache is the same for the next
        chunk ((B, d, 0) for a non-causal module), None when no cache was passed.
        """
        x = x.transpose(1, 2)  # (B, d, T)
        if mask_pad is not None:
            x = x.masked_fill(~mask_pad, 0.0)
        new_cache = None
        if self.lorder > 0:
            if cache is not None and cache.size(-1) > 0:
                x = torch.cat((cache, x), dim=2)
            else:
                x = F.pad(x, (self.lorder, 0))
            if cache is not None:
                new_cache = x[:, :, -self.lorder :]
        elif cache is not None:
            new_cache = x[:, :, :0]
        x = F.glu(self.pointwise_conv1(x), dim=1)
        x = self.depthwise_conv(x)
        if self.use_layer_norm:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        else:
            x = self.norm(x)
        x = self.pointwise_conv2(self.activation(x))
        if mask_pad is not None:
            x = x.masked_fill(~mask_pad, 0.0)
        return x.transpose(1, 2), new_cache
