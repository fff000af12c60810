"""Synthetic support tickets with their true labels (deterministic, no data files)."""

from __future__ import annotations

import random
from dataclasses import dataclass

_TEMPLATES = {
    "billing": [
        "I was charged twice for my {plan} plan",
        "Please send the invoice for {month}",
        "I want a refund for the {plan} subscription",
        "My payment card was declined on renewal",
        "Why did my bill go up in {month}?",
    ],
    "bug": [
        "The app crashes when I open {screen}",
        "Error 500 when saving {screen}",
        "The {screen} page is broken after the update",
        "Export freezes at 99% on {screen}",
        "Login button does nothing on {screen}",
    ],
    "other": [
        "Can you add dark mode to {screen}?",
        "How do I invite a colleague to {plan}?",
        "Thanks for the quick help last {month}!",
        "Is there a student discount question for {plan}?",
        "Where can I read the roadmap for {month}?",
    ],
}
_FILL = {
    "plan": ["Pro", "Team", "Starter", "Enterprise"],
    "month": ["March", "April", "May", "June"],
    "screen": ["settings", "reports", "the dashboard", "billing history"],
}


@dataclass(frozen=True)
class Ticket:
    """A support ticket: a stable id (the item key), its text and its true label."""

    id: str
    text: str
    label: str


def tickets(n: int, seed: int) -> list[Ticket]:
    """``n`` tickets drawn with ``seed`` (the same seed gives the same tickets).

    Example:
        >>> [t.label for t in tickets(3, seed=1)] == [t.label for t in tickets(3, seed=1)]
        True
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(sorted(_TEMPLATES))
        i = rng.randrange(len(_TEMPLATES[label]))
        fill = {k: rng.choice(v) for k, v in _FILL.items()}
        text = _TEMPLATES[label][i].format(**fill)
        tid = f"T-{label[:2]}{i}-{fill['plan'][:2]}{fill['month'][:3]}{fill['screen'][:4]}"
        out.append(Ticket(tid.replace(" ", ""), text, label))
    return out
