"""Experiments on the validation split and on the pipeline's outputs: command-line tools run from the
repository root as ``python -m experiments.<name>`` (``--help`` says what each measures). Each trains
and evaluates through the package's one recipe (:mod:`rgvlm.rl.training`,
:mod:`rgvlm.evaluation.stack`); ``tests/test_experiments.py`` runs each on the tiny profile."""
