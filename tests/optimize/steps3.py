"""Moved to :mod:`flows.examples.steps3`; re-exported here."""

from flows.examples.steps3 import *  # noqa: F403
