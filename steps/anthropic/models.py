"""Pydantic models of an Anthropic Messages request, used only to check a body.

Rules, from PROTOCOL §1 and RELIABILITY §3:

- Unknown fields are ignored everywhere (`extra="ignore"`): Claude Code adds fields with every
  release, and a 400 sends it into a degrade-and-retry loop that ends in failure.
- Types are strict: `"10"` is not an integer and `"true"` is not a boolean, as in the real API.
- Content blocks, tools, `tool_choice` and `thinking` are tagged by `type`. The unions use a
  callable discriminator whose tags start with `#`; the error formatter in validate.py drops
  those tags from error paths so they read like Anthropic's (`messages.0.content.1.text`).
- A block type newer than this code is never refused (issue 16): anthropic.clean converts or
  drops it before validation, and the block union still accepts any string `type` (an `#other`
  tag) so count_tokens or a pipeline without clean does not 400 on it either. Only a block whose
  `type` is missing or not a string is refused.
- The models are never used downstream: steps keep working on the dicts (faster), so the models
  only check what later steps rely on, not every documented constraint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
)
from pydantic_core import PydanticCustomError

TAG_MARK = "#"

TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"

BLOCK_TYPES: tuple[str, ...] = (
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
    "container_upload",
    "tool_reference",
    "mid_conv_system",
)
"""Content block types whose shape is checked. Any other string `type` is accepted unchecked;
anthropic.clean has converted or dropped it before validation (steps/anthropic/blocks.py)."""

TOOL_CHOICE_TYPES: tuple[str, ...] = ("auto", "any", "tool", "none")
THINKING_TYPES: tuple[str, ...] = ("enabled", "disabled", "adaptive")

# custom error types the formatter in validate.py recognises -> the tags it lists
UNION_ERRORS: dict[str, tuple[str, ...]] = {
    "invalid_image_source": ("base64", "url"),
    "invalid_document_source": ("base64", "url", "text", "content"),
    "invalid_source_block": ("text", "image"),
    "invalid_block": BLOCK_TYPES,
    "invalid_tool_choice": TOOL_CHOICE_TYPES,
    "invalid_thinking": THINKING_TYPES,
    "invalid_tool": (),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


def _text_or_list(value: Any) -> Any:
    """A string content is shorthand for one text block; anything else must be a list."""
    if type(value) is str:
        return [{"type": "text", "text": value}]
    if type(value) is list:
        return value
    raise PydanticCustomError("string_or_list", "Input should be a valid string or an array of content blocks")


def _role(value: str) -> str:
    # `system` is Claude Code's beta role inside `messages`; anthropic.clean normally merges it
    # into the top-level system prompt. It is accepted, but not advertised.
    if value not in ("user", "assistant", "system"):
        raise PydanticCustomError("literal_error", "Input should be 'user' or 'assistant'")
    return value


# --- content blocks ------------------------------------------------------------------------


class TextBlock(_Model):
    type: Literal["text"]
    text: str


IMAGE_SOURCE_TYPES: tuple[str, ...] = ("base64", "url")
DOCUMENT_SOURCE_TYPES: tuple[str, ...] = ("base64", "url", "text", "content")
"""Sources whose shape is checked. Any other source type (`file`, Anthropic's Files API, which
no OpenAI-compatible upstream can read, or a newer one) is accepted unchecked; the converter
puts a note in its place, so the model knows something was there."""


def _type_tagger(tags: dict[str, str], other: str | None = None) -> Callable[[Any], str | None]:
    """A discriminator: the tag of a dict's `type` (`other` for an unlisted type; None, which
    pydantic reports as the custom error, for a non-dict or a `type` that is not a string)."""

    def tag(value: Any) -> str | None:
        if type(value) is dict:
            t = value.get("type")
            if type(t) is str:
                return tags.get(t, other)
        return None

    return tag


class Base64Source(_Model):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_Model):
    type: Literal["url"]
    url: str


class TextSource(_Model):
    type: Literal["text"]
    data: str
    media_type: str | None = None


class OtherSource(_Model):
    type: str


ImageSource = Annotated[
    Union[Annotated[Base64Source, Tag("#base64")], Annotated[UrlSource, Tag("#url")], Annotated[OtherSource, Tag("#other")]],
    Discriminator(_type_tagger({t: TAG_MARK + t for t in IMAGE_SOURCE_TYPES}, other="#other"), custom_error_type="invalid_image_source", custom_error_message="invalid image source"),
]


class ImageBlock(_Model):
    type: Literal["image"]
    source: ImageSource


_ContentSourceBlock = Annotated[
    Union[Annotated[TextBlock, Tag("#text")], Annotated[ImageBlock, Tag("#image")], Annotated[OtherSource, Tag("#other")]],
    Discriminator(_type_tagger({"text": "#text", "image": "#image"}, other="#other"), custom_error_type="invalid_source_block", custom_error_message="invalid content block"),
]


class ContentSource(_Model):
    type: Literal["content"]
    content: Annotated[list[_ContentSourceBlock], BeforeValidator(_text_or_list)]


DocumentSource = Annotated[
    Union[
        Annotated[Base64Source, Tag("#base64")],
        Annotated[UrlSource, Tag("#url")],
        Annotated[TextSource, Tag("#text")],
        Annotated[ContentSource, Tag("#content")],
        Annotated[OtherSource, Tag("#other")],
    ],
    Discriminator(_type_tagger({t: TAG_MARK + t for t in DOCUMENT_SOURCE_TYPES}, other="#other"), custom_error_type="invalid_document_source", custom_error_message="invalid document source"),
]


class DocumentBlock(_Model):
    type: Literal["document"]
    source: DocumentSource


class SearchResultBlock(_Model):
    type: Literal["search_result"]
    source: str
    title: str
    content: list[TextBlock]


class ToolUseBlock(_Model):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Model):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Annotated[list[Block], BeforeValidator(_text_or_list)] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Model):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(_Model):
    type: Literal["redacted_thinking"]
    data: str


class ServerToolUseBlock(_Model):
    type: Literal["server_tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ServerToolResultBlock(_Model):
    """Any `*_tool_result` of a server tool: opaque content that must round-trip unchanged."""

    type: str
    tool_use_id: str
    content: Any = None


class ContainerUploadBlock(_Model):
    type: Literal["container_upload"]
    file_id: str


class ToolReferenceBlock(_Model):
    type: Literal["tool_reference"]
    tool_name: str


class MidConvSystemBlock(_Model):
    type: Literal["mid_conv_system"]
    content: Annotated[list[TextBlock], BeforeValidator(_text_or_list)]


class OtherBlock(_Model):
    """A block type this code does not know (a newer client's): accepted, not checked."""

    type: str


_SERVER_RESULTS = frozenset(
    {
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
    }
)
_BLOCK_TAGS = {t: TAG_MARK + ("server_tool_result" if t in _SERVER_RESULTS else t) for t in BLOCK_TYPES}


def _block_tag(value: Any) -> str | None:
    """A known type's tag; `#server_tool_result` for any other `*_tool_result` that names its
    call (a newer server tool's result, e.g. `advisor_tool_result`); else `#other`."""
    if type(value) is dict:
        t = value.get("type")
        if type(t) is str:
            tag = _BLOCK_TAGS.get(t)
            if tag is not None:
                return tag
            if t.endswith("_tool_result") and "tool_use_id" in value:
                return "#server_tool_result"
            return "#other"
    return None


Block = Annotated[
    Union[
        Annotated[TextBlock, Tag("#text")],
        Annotated[ImageBlock, Tag("#image")],
        Annotated[DocumentBlock, Tag("#document")],
        Annotated[SearchResultBlock, Tag("#search_result")],
        Annotated[ToolUseBlock, Tag("#tool_use")],
        Annotated[ToolResultBlock, Tag("#tool_result")],
        Annotated[ThinkingBlock, Tag("#thinking")],
        Annotated[RedactedThinkingBlock, Tag("#redacted_thinking")],
        Annotated[ServerToolUseBlock, Tag("#server_tool_use")],
        Annotated[ServerToolResultBlock, Tag("#server_tool_result")],
        Annotated[ContainerUploadBlock, Tag("#container_upload")],
        Annotated[ToolReferenceBlock, Tag("#tool_reference")],
        Annotated[MidConvSystemBlock, Tag("#mid_conv_system")],
        Annotated[OtherBlock, Tag("#other")],
    ],
    Discriminator(_block_tag, custom_error_type="invalid_block", custom_error_message="invalid content block"),
]

ToolResultBlock.model_rebuild()


class Message(_Model):
    role: Annotated[str, AfterValidator(_role)]
    content: Annotated[list[Block], BeforeValidator(_text_or_list)]


# --- tools ---------------------------------------------------------------------------------


class CustomTool(_Model):
    """A client tool: its name must map 1:1 onto OpenAI function names."""

    type: Literal["custom"] | None = None
    name: Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]
    description: str | None = None
    input_schema: dict[str, Any]


class ServerTool(_Model):
    """A versioned server tool (`web_search_20250305`, `bash_20250124`, …): only `type` is checked."""

    type: str
    name: str | None = None


def _tool_tag(value: Any) -> str | None:
    if type(value) is dict:
        t = value.get("type")
        if t is None or t == "custom":
            return "#custom"
        if type(t) is str:
            return "#server"
    return None


Tool = Annotated[
    Union[Annotated[CustomTool, Tag("#custom")], Annotated[ServerTool, Tag("#server")]],
    Discriminator(_tool_tag, custom_error_type="invalid_tool", custom_error_message="invalid tool"),
]


class ToolChoiceAuto(_Model):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Model):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Model):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Model):
    type: Literal["none"]


class ToolChoiceOther(_Model):
    """A tool_choice type newer than this code: accepted; the converter leaves the choice to
    the model (OpenAI's default, `auto`)."""

    type: str


ToolChoice = Annotated[
    Union[
        Annotated[ToolChoiceAuto, Tag("#auto")],
        Annotated[ToolChoiceAny, Tag("#any")],
        Annotated[ToolChoiceTool, Tag("#tool")],
        Annotated[ToolChoiceNone, Tag("#none")],
        Annotated[ToolChoiceOther, Tag("#other")],
    ],
    Discriminator(
        _type_tagger({t: TAG_MARK + t for t in TOOL_CHOICE_TYPES}, other="#other"), custom_error_type="invalid_tool_choice", custom_error_message="invalid tool_choice"
    ),
]


# --- thinking and output -------------------------------------------------------------------


class ThinkingEnabled(_Model):
    type: Literal["enabled"]
    budget_tokens: int
    display: str | None = None


class ThinkingDisabled(_Model):
    type: Literal["disabled"]


class ThinkingAdaptive(_Model):
    type: Literal["adaptive"]
    display: str | None = None


class ThinkingOther(_Model):
    """A thinking type newer than this code: accepted (never 400 on what Claude Code adds next);
    the converter treats it as no explicit reasoning setting."""

    type: str


_thinking_tag = _type_tagger({t: TAG_MARK + t for t in THINKING_TYPES}, other="#other")


Thinking = Annotated[
    Union[
        Annotated[ThinkingEnabled, Tag("#enabled")],
        Annotated[ThinkingDisabled, Tag("#disabled")],
        Annotated[ThinkingAdaptive, Tag("#adaptive")],
        Annotated[ThinkingOther, Tag("#other")],
    ],
    Discriminator(_thinking_tag, custom_error_type="invalid_thinking", custom_error_message="invalid thinking"),
]


class OutputFormat(_Model):
    type: str
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class OutputConfig(_Model):
    effort: str | None = None
    format: OutputFormat | None = None


class Metadata(_Model):
    user_id: str | None = None


# --- requests ------------------------------------------------------------------------------

MAX_TOKENS_LIMIT = 1_000_000_000


class _RequestBase(_Model):
    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1, max_length=100_000)]
    system: Annotated[list[TextBlock], BeforeValidator(_text_or_list)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(_RequestBase):
    """`POST /v1/messages`."""

    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
    metadata: Metadata | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None


class CountTokensRequest(_RequestBase):
    """`POST /v1/messages/count_tokens`: no `max_tokens` (ignored if sent, unlike the real API)."""
