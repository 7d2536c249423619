"""Server-side tools: the tool detector, the tool-sequence executor and the sandboxed tools.

Importing the package registers `tools.detect`, `tools.execute_sequence` and
`tools.web_search_openrouter`. Nothing here runs unless a pipeline opts in
(pipelines/agent.yaml; Anthropic's web server tools on any pipeline that uses tools.detect).
"""

from steps.tools import plan, sequence, web  # noqa: F401  (registers the steps)
from steps.tools.plan import detect
from steps.tools.sequence import execute_sequence

__all__ = ["detect", "execute_sequence"]
