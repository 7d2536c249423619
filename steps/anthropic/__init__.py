"""Serving the Anthropic Messages API: parse, clean and validate requests, render replies,
streams and errors the way Anthropic clients (Claude Code, the SDKs) expect them.

Importing the package registers its steps (anthropic.parse, anthropic.threads,
anthropic.tool_changes, anthropic.clean, anthropic.validate, anthropic.validate_count_tokens,
anthropic.context_edits, anthropic.compaction_request, anthropic.compaction_block,
anthropic.apply_compaction, anthropic.context_reply, anthropic.error, anthropic.reply,
anthropic.estimate_input_tokens, anthropic.count_tokens).
"""

from steps.anthropic import clean, compaction, context_edits, engine_hooks, errors, models, parse, reply, sse, threads, tokens, tool_changes, validate  # noqa: F401
