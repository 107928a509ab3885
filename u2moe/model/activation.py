"""Activation functions by config name (`swish`, `relu`, `gelu`)."""

from torch import nn

_ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


def make_activation(name: str) -> nn.Module:
    """A new activation module; `swish` is x * sigmoid(x), WeNet's Swish."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]()
