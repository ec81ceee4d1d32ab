"""The labelled reward methods, one module each (a plugin): ``config_from_params``, ``label``
and optionally ``diagnostic``, the interface :mod:`rgvlm.rewards.registry` documents. They build on
the shared query toolkit in :mod:`rgvlm.rewards` (queries, segments, reward models, the observation
API); none imports another. A method is found through its entry in the registry, which names its
module, prompts and params section; ``docs/methods.md`` ("Adding a method") lists what a new one
touches.
"""
