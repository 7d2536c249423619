"""What the Anthropic protocol tells the engine, which knows no protocol: its key header and
the shape of the keys its clients send, so inbound keys are consumed and never logged.

Declared here, when the step package is imported (the engine imports it through the
`engine.steps` entry point), through the engine's generic registration calls.
"""

from engine.keys import key_header
from engine.logs import register_secret_values

# Anthropic clients send their key as `x-api-key` (the SDKs, Claude Code); with inbound keys
# on, the engine takes it out of the request before any pipeline sees it.
X_API_KEY = key_header("x-api-key")

# Keys as clients and upstreams spell them: Anthropic's `sk-ant-...`, OpenRouter's
# `sk-or-v1-...`, and the `sk-...` of OpenAI-compatible servers, scrubbed wherever they appear.
register_secret_values(r"sk-[A-Za-z0-9_\-]{6,}", marker="sk-")
