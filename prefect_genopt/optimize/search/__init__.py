"""The nightly search: drafts and demos, chosen on replayed items, confirmed by a paired test.

Modules: :mod:`.core` (the shared types), :mod:`.pools` (disjoint run pools),
:mod:`.stats` (the exact sign test and its interval), :mod:`.filters` (cheap filters with
counted reasons), :mod:`.halving` (successive halving), :mod:`.generators` (the
:class:`CandidateGenerator` interface and the built-in generators), :mod:`.evaluate`
(scores by replay, cached) and :mod:`.night` (one night, end to end).
"""
