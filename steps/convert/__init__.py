"""Anthropic ⇄ OpenAI chat completions conversion steps: request, response and stream.

Importing the package registers `convert.request`, `convert.requests`, `convert.response` and
`convert.stream`.
"""

from steps.convert import request, response, stream  # noqa: F401  (registers the steps)
