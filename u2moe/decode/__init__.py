"""Decoding: CTC greedy / prefix beam, attention beam, rescoring, streaming recognizer, scoring."""
