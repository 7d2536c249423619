"""Anthropic ⇄ OpenAI chat completions conversion steps: request, response and stream.

Importing the package registers `convert.request`, `convert.requests`, `convert.answer` (an
upstream answer as the client asked for it: events, or a Message folded from them) and
`convert.stream`.
"""

from steps.convert import answer, request, response, stream  # noqa: F401  (registers the steps)
