"""The domain: the Anthropic Messages API served over OpenAI-compatible upstreams.

Importing this package registers every step (the engine imports it through the
`engine.steps` entry point in pyproject.toml).
"""

from steps import anthropic, convert, openrouter, providers, tools  # noqa: F401
