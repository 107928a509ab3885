"""u2moe: U2++ MoE speech recognition (Conformer + CTC + bidirectional attention decoder)."""

__version__ = "0.1.0"
