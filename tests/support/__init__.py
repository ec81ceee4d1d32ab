"""Test support that the benchmarks use too (they run from the repository root, as
``python -m benchmarks.<name>``, where ``tests`` is importable): local OpenAI-compatible chat
servers (one injecting faults), tiny vision-language models built offline, and an eager
one-run IQL trainer the stacked trainer is checked against. Not part of the ``rgvlm`` package;
no stage imports it."""
