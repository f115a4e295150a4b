"""Request bodies of the gateway and the mapping of OpenAI's controls onto the three modes.

``POST /generate`` is this project's own API: unknown fields are refused so a typo is an error.
The OpenAI endpoints ignore fields they do not use, as OpenAI clients send many.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Mode = Literal["auto", "think", "no_think"]

#: The prompting strategy (autothink.prompting) behind each serving mode.
STRATEGY: dict[str, str] = {"auto": "ellipsis", "think": "standard", "no_think": "no_think"}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)

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


class Sampling(BaseModel):
    max_tokens: int | None = Field(None, ge=1, description="Most response tokens (reasoning + answer).")
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, description="Number of choices.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False


class Adaptive(BaseModel):
    thinking_budget: int | None = Field(None, ge=0, description="After this many reasoning tokens, </think> is forced.")
    think_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="mode=auto only: think iff think_probability >= threshold (no sampling of the choice)."
    )


class GenerateRequest(Sampling, Adaptive):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, max_length=200_000, description="A problem; the model's instruction is appended.")
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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(Sampling, Adaptive):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    stream_options: StreamOptions | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    mode: Mode | None = None

    def resolved_mode(self) -> Mode:
        """``mode`` if given; else ``chat_template_kwargs.thinking`` (auto/on/off or a bool); else
        ``reasoning_effort="none"`` → no_think; else auto."""
        if self.mode is not None:
            return self.mode
        thinking = (self.chat_template_kwargs or {}).get("thinking")
        if thinking is not None:
            table: dict[Any, Mode] = {"auto": "auto", "on": "think", "off": "no_think", True: "think", False: "no_think"}
            if thinking not in table:
                raise ValueError("chat_template_kwargs.thinking must be 'auto', 'on', 'off', true or false")
            return table[thinking]
        if self.reasoning_effort == "none":
            return "no_think"
        return "auto"


class CompletionRequest(Sampling):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | list[str] = Field(description="Raw prompt text, sent as is.")
    max_tokens: int | None = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream_options: StreamOptions | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("send one prompt per request")
            v = v[0]
        if len(v) > 200_000:
            raise ValueError("prompt is longer than 200000 characters")
        if not v:
            raise ValueError("prompt is empty")
        return v
