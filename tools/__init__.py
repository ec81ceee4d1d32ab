"""The project's own tooling, run from the repository root as ``python -m tools.<name>``: checks of
the repository (not part of the installed ``rgvlm`` package, and no stage depends on it)."""
