"""u2moe: U2++ MoE speech recognition (Conformer + CTC + bidirectional attention decoder)."""

__version__ = "0.1.0"

__all__ = ["load_model"]


def __getattr__(name: str):
    # `import u2moe` stays light: torch and the model load on first use of the API.
    if name == "load_model":
        from u2moe.api import load_model

        return load_model
    raise AttributeError(f"module 'u2moe' has no attribute {name!r}")
