"""The gateway's wire format: request bodies, the error body, and how OpenAI's controls map onto
the three serving modes and the thinking budget (as vLLM's ``entrypoints/openai/protocol.py``).

``POST /generate`` is this project's own API: unknown fields are refused, so a typo is an error.
The OpenAI endpoints ignore fields they do not use, as OpenAI clients send many.  Every value a
client can send is checked here, so anything the engine later refuses is the gateway's own fault
(a 500 with a request id), never a parameter the client could have fixed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

Mode = Literal["auto", "think", "no_think"]
Effort = Literal["none", "minimal", "low", "medium", "high"]

#: The prompting strategy (autothink.prompting) behind each serving mode.
STRATEGY: dict[str, str] = {"auto": "ellipsis", "think": "standard", "no_think": "no_think"}

MAX_TEXT = 200_000  # characters of one prompt or message


class ApiError(Exception):
    """A refusal with an OpenAI-style body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def internal_error(request_id: str) -> ApiError:
    """What a client sees of a failure inside the gateway: the request id to quote, nothing else."""
    return ApiError(500, f"internal error; the gateway's log has the details under request id {request_id}",
                    "server_error", code="internal_error")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT)

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, v: Any) -> Any:
        """OpenAI clients may send content as a list of parts; only text parts are served."""
        if isinstance(v, list):
            texts = []
            for part in v:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
                texts.append(part["text"])
            return "".join(texts)
        return v


Stop = str | list[str] | None


def _stops(v: Stop) -> list[str]:
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if len(items) > 4 or any(not s or len(s) > 200 for s in items):
        raise ValueError("stop takes up to 4 non-empty strings of at most 200 characters")
    return list(items)


class SamplingFields(BaseModel):
    max_tokens: int | None = Field(None, ge=1, description="Most response tokens, reasoning + answer (default: what fits the context).")
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, description="Number of choices.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: Stop = Field(None, description="Up to 4 strings; generation stops before any of them.")
    stream: bool = False

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: Stop) -> Stop:
        _stops(v)
        return v

    @property
    def stop_strings(self) -> list[str]:
        return _stops(self.stop)


class AdaptiveFields(BaseModel):
    thinking_budget: int | None = Field(
        None, ge=0, validation_alias=AliasChoices("thinking_budget", "thinking_token_budget"),
        description="After this many reasoning tokens the reasoning is closed for the model (`thinking_token_budget`, vLLM's name, is accepted too).",
    )
    think_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="mode=auto only: think iff think_probability >= threshold, decided at the first token.",
    )
    reasoning_effort: Effort | None = Field(
        None, description="none: answer without thinking; minimal/low/medium/high: a thinking budget from the gateway's settings.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_budget_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "thinking_budget" in data and "thinking_token_budget" in data \
                and data["thinking_budget"] != data["thinking_token_budget"]:
            raise ValueError("thinking_budget and thinking_token_budget are the same setting; send one")
        return data


class GenerateRequest(SamplingFields, AdaptiveFields):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    prompt: str | None = Field(None, max_length=MAX_TEXT, description="A problem; the model's instruction is appended.")
    messages: list[Message] | None = Field(None, min_length=1, description="A conversation, instead of prompt.")
    mode: Mode = Field("auto", description="auto: the model decides (ellipsis prompt); think; no_think.")
    add_instruction: bool = Field(True, description="Append the boxed-answer instruction to `prompt`.")

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.think_threshold is not None and self.mode != "auto":
            raise ValueError("think_threshold applies to mode=auto only")
        return self

    def resolved_mode(self) -> Mode:
        return "no_think" if self.reasoning_effort == "none" and self.mode == "auto" else self.mode


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatTemplateKwargs(BaseModel):
    """The part of ``chat_template_kwargs`` the gateway reads; other keys are ignored."""

    model_config = ConfigDict(extra="ignore")
    thinking: Literal["auto", "on", "off"] | bool | None = Field(None, description="auto, on (think), off (no_think), or a bool.")


class ChatCompletionRequest(SamplingFields, AdaptiveFields):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Most completion tokens, reasoning + answer (OpenAI's name; wins over max_tokens).")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream_options: StreamOptions | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    mode: Mode | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def resolved_mode(self) -> Mode:
        """``mode`` if given; else ``chat_template_kwargs.thinking``; else ``reasoning_effort="none"``
        → no_think; else auto.

        >>> ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], reasoning_effort="none").resolved_mode()
        'no_think'
        """
        if self.mode is not None:
            return self.mode
        thinking = self.chat_template_kwargs.thinking if self.chat_template_kwargs else None
        if thinking is not None:
            table: dict[Any, Mode] = {"auto": "auto", "on": "think", "off": "no_think", True: "think", False: "no_think"}
            return table[thinking]
        if self.reasoning_effort == "none":
            return "no_think"
        return "auto"

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | list[str] = Field(description="Raw prompt text, sent as is (special tokens in it are tokens).")
    max_tokens: int | None = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    logprobs: int | None = Field(None, ge=0, le=5, description="Return the log-probabilities of the sampled and the top tokens.")
    stream_options: StreamOptions | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("send one prompt per request")
            v = v[0]
        if len(v) > MAX_TEXT:
            raise ValueError(f"prompt is longer than {MAX_TEXT} characters")
        if not v:
            raise ValueError("prompt is empty")
        return v
