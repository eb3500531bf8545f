"""OpenAI's request and response bodies as pydantic models: what `serve` reads and writes.

Requests are validated strictly (no "1" for 1, no true for 1, no 1.5 for an integer); fields
that do not change the answer are ignored. The ranges of the sampling fields are
GenerationParams' own (generation/params.py), and so are their messages. A validation error
becomes one sentence that names the field (`ApiError.param`), in OpenAI's error shape.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import GenerationResult
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.structured import SchemaError, json_grammar
from dolly_desktop.server.errors import ApiError

MAX_STOPS = 4
MAX_STOP_CHARS = 200  # each stop string; they are searched for as every piece arrives
MAX_COLLECTIONS = 8  # document collections one request may search
MAX_COLLECTION_CHARS = 64  # a collection name's limit (documents/index.py, NAME_RE)

# API field -> GenerationParams field. Chat's max_completion_tokens comes after max_tokens, so
# that it wins when a request has both, as in OpenAI's API.
SAMPLING_FIELDS = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
}
_SPECIAL = {("temperature", 0): "greedy", ("top_k", -1): "all"}  # 0 means greedy; -1 no top-k

# The sentence for a field whose value pydantic refused, by field.
MESSAGES = {
    "prompt": "prompt must be one string: the instruction.",
    "model": "model must be a string.",
    "stream": "stream must be true or false.",
    "stream_options": "stream_options must be an object.",
    "stop": f"stop must be a string or a list of at most {MAX_STOPS} strings of at most "
    f"{MAX_STOP_CHARS} characters each.",
    "n": "Only one choice per request (n = 1) is supported.",
    "logprobs": "Log probabilities are not supported.",
    "top_logprobs": "Log probabilities are not supported.",
    "response_format": 'response_format must be {"type": "text"}, {"type": "json_object"} or '
    '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}.',
    "documents": "documents must be a collection name or a list of at most "
    f"{MAX_COLLECTIONS} names, each 1 to {MAX_COLLECTION_CHARS} characters "
    "(dolly-desktop docs list).",
    "documents_fallback": "documents_fallback must be true or false.",
    "messages": "messages must be a non-empty list of messages, each an object with a role "
    "and text content.",
}


def _refusal(field: str, value: Any) -> str | None:
    """GenerationParams' own sentence for a sampling value it refuses (type or range)."""
    try:
        GenerationParams(**{SAMPLING_FIELDS[field]: value})
    except DollyError as e:
        return str(e)
    return None


def _in_range(field: str) -> AfterValidator:
    def check(value: Any) -> Any:
        if value is None or (field, value) in _SPECIAL:
            return value
        refusal = _refusal(field, value)
        if refusal is not None:
            raise PydanticCustomError("out_of_range", refusal)
        return value

    return AfterValidator(check)


def _false_only(value: bool) -> bool:
    if value:
        raise PydanticCustomError("unsupported", MESSAGES["logprobs"])
    return value


Whole = Annotated[int, Field(strict=True)]
CollectionName = Annotated[str, Field(min_length=1, max_length=MAX_COLLECTION_CHARS)]
Number = Annotated[float, Field(strict=True)]  # an integer is a number too; true is not


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    name: str | None = None
    # "schema" would shadow BaseModel.schema: kept under another name, read by its alias.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None  # the answer always follows the schema here


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class GenerationRequest(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    temperature: Annotated[Number | None, _in_range("temperature")] = None
    top_p: Annotated[Number | None, _in_range("top_p")] = None
    top_k: Annotated[Whole | None, _in_range("top_k")] = None
    repetition_penalty: Annotated[Number | None, _in_range("repetition_penalty")] = None
    seed: Annotated[Whole | None, _in_range("seed")] = None
    stop: (
        Annotated[str, Field(max_length=MAX_STOP_CHARS)]
        | Annotated[
            list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOPS)
        ]
        | None
    ) = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[Whole, Field(ge=1, le=1)] | None = None
    logprobs: Annotated[bool, Field(strict=True), AfterValidator(_false_only)] | None = None
    top_logprobs: None = None
    response_format: ResponseFormat | None = None

    # Extension: a passage for Dolly to work from, given in its Input: format.
    context: str | None = None
    # Extension: collections to find the passage in (server/sources.py), and whether to
    # answer without one when nothing in them matches.
    documents: (
        CollectionName
        | Annotated[list[CollectionName], Field(min_length=1, max_length=MAX_COLLECTIONS)]
        | None
    ) = None
    documents_fallback: bool | None = None

    def instruction(self) -> str:
        raise NotImplementedError

    def passage(self) -> str:
        return self.context or ""

    def params(self) -> GenerationParams:
        values: dict[str, Any] = {}
        for api, name in SAMPLING_FIELDS.items():
            value = getattr(self, api, None)
            if value is None:
                continue
            special = _SPECIAL.get((api, value))
            if special == "greedy":
                values["greedy"] = True
            elif special == "all":
                values[name] = 0  # "all tokens" in vLLM and OVMS; 0 is the same here
            else:
                values[name] = value
        return GenerationParams(**values)

    def grammar(self, budget_tokens: int) -> str | None:
        """The grammar the answer must follow (generation/structured.py), bounded so that the
        answer closes within `budget_tokens`; None for free text."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_schema" and fmt.json_schema is None:
            raise ApiError(400, MESSAGES["response_format"], "response_format")
        schema = fmt.json_schema.json_schema if fmt.json_schema is not None else None
        try:
            return json_grammar(schema, budget_tokens)
        except SchemaError as e:
            raise ApiError(400, f"response_format: {e}", "response_format") from e

    def collections(self) -> list[str]:
        """The document collections named, each once, in order; [] for none."""
        names = [self.documents] if isinstance(self.documents, str) else self.documents or []
        return list(dict.fromkeys(n.strip() for n in names))

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage is True


class CompletionRequest(GenerationRequest):
    """POST /v1/completions: `prompt` is the instruction (or a whole Dolly prompt)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: Annotated[Whole | None, _in_range("max_tokens")] = None

    def instruction(self) -> str:
        # One prompt in a list, as some clients send it.
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: str
    content: str | list[TextPart] | None = None


class ChatRequest(GenerationRequest):
    """POST /v1/chat/completions: the last user message is the instruction."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[Whole | None, _in_range("max_tokens")] = None
    max_completion_tokens: Annotated[Whole | None, _in_range("max_completion_tokens")] = None

    def instruction(self) -> str:
        return _text(self.messages[self._last_user()])

    def passage(self) -> str:
        """The `context` field, else a user message right before the last one (two user
        messages in a row), as models/chat_template.py renders it for OVMS."""
        if self.context:
            return self.context
        i = self._last_user()
        return _text(self.messages[i - 1]) if i > 0 and self.messages[i - 1].role == "user" else ""

    def _last_user(self) -> int:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "user":
                return i
        raise ApiError(400, "messages has no user message: it holds the instruction.", "messages")


def _text(m: ChatMessage) -> str:
    if isinstance(m.content, str):
        return m.content
    if isinstance(m.content, list):
        return "\n".join(p.text for p in m.content)
    raise ApiError(400, "A user message's content must be text.", "messages")


def parse(kind: type[GenerationRequest], body: Any) -> GenerationRequest:
    """The request, or an ApiError naming the first field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    try:
        return kind.model_validate(body)
    except ValidationError as e:
        error = e.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else None
        if error["type"] in ("out_of_range", "unsupported"):
            message = error["msg"]
        elif field in SAMPLING_FIELDS:
            message = _refusal(field, error.get("input")) or f"{field} is not valid."
        elif error["type"] == "missing":
            message = MESSAGES.get(field or "", f"{field} is missing.")
        else:
            message = MESSAGES.get(field or "", f"{field} is not valid.")
        raise ApiError(400, message, field) from None


# --- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, result: GenerationResult) -> Usage:
        return cls(
            prompt_tokens=result.input_tokens,
            completion_tokens=result.generated_tokens,
            total_tokens=result.input_tokens + result.generated_tokens,
        )


class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _set_fields_only(self) -> dict[str, Any]:  # {} for the last chunk, as OpenAI sends
        return {k: v for k, v in (("role", self.role), ("content", self.content)) if v is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class Body(BaseModel):
    id: str
    object: str
    created: int
    model: str
    choices: list[Any]  # TextChoice, ChatChoice or ChatChunkChoice
    usage: Usage | None = None
    # Extension: the document chunks the passage was made of (server/sources.py).
    sources: list[dict[str, Any]] | None = None

    @model_serializer(mode="wrap")
    def _extras_only_when_set(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in ("usage", "sources"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Reply:
    """Response bodies in OpenAI's shapes for one request."""

    def __init__(self, model_id: str, chat: bool) -> None:
        self.chat = chat
        self.model_id = model_id
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _body(
        self,
        suffix: str,
        choices: list[Any],
        usage: Usage | None = None,
        sources: list[dict[str, Any]] | None = None,
    ) -> Body:
        kind = "chat.completion" if self.chat else "text_completion"
        return Body(
            id=self.id,
            object=kind + suffix,
            created=self.created,
            model=self.model_id,
            choices=choices,
            usage=usage,
            sources=sources,
        )

    def whole(
        self,
        text: str,
        finish: str,
        usage: Usage,
        sources: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        choice: Any = (
            ChatChoice(message=AssistantMessage(content=text), finish_reason=finish)
            if self.chat
            else TextChoice(text=text, finish_reason=finish)
        )
        return self._body("", [choice], usage, sources).model_dump()

    def chunk(
        self,
        text: str | None,
        finish: str | None = None,
        first: bool = False,
        sources: list[dict[str, Any]] | None = None,
    ) -> str:
        """One SSE event: a piece of text, the chat's opening role, or the finish reason (with
        the document sources, if the request asked for documents)."""
        choice: Any
        if self.chat:
            delta = Delta(role="assistant", content="") if first else Delta(content=text)
            choice = ChatChunkChoice(delta=delta, finish_reason=finish)
        else:
            choice = TextChoice(text=text or "", finish_reason=finish)
        body = self._body(".chunk" if self.chat else "", [choice], sources=sources)
        return sse(body.model_dump_json())

    def usage_chunk(self, usage: Usage) -> str:
        return sse(self._body(".chunk" if self.chat else "", [], usage).model_dump_json())


def sse(data: str) -> str:
    return f"data: {data}\n\n"
