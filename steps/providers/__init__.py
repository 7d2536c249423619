"""Upstream providers: which servers a gateway talks to (providers.yaml), how each one's
dialect differs, and what an upstream failure means (one classification for every decision)."""

from steps.providers import config, dialects, failures  # noqa: F401
