"""The built-in English corpus: sentences from Debian text packages read by Debian TTS engines.

`sentences` picks and normalizes the text, `voices` is the catalogue of engines and the
speakers behind them, `recipe` plans which sentence each voice reads and writes the
manifests, `synthesize` runs the engines. recipes/README.md describes the result.
"""
