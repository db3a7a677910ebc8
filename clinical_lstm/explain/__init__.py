"""Stage 4, explanations: per-variable Shapley values of the stacked log-odds (``shapley``; exact for the
summary members, ``members``; sampled permutations for the networks) and their plots (``plots``).

May import: ``model``, ``features``, ``data`` and the base modules.
"""
