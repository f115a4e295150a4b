"""The gateway's wire format: request bodies, the error body, and how OpenAI's controls map onto
the three serving modes and the thinking budget (as vLLM's ``entrypoints/openai/protocol.py``).

``POST /generate`` is this project's own API: unknown fields are refused, so a typo is an error.
The OpenAI endpoints follow vLLM's server, with one rule for every field (#39: ``ignore_eos`` and
``min_tokens`` were dropped without a word, and a load test asking 64 tokens got a median of 33):

* **honoured:** OpenAI's sampling fields and vLLM's common extensions (``ignore_eos``,
  ``min_tokens``, ``stop_token_ids``, ``repetition_penalty``, ``top_k``, ``min_p``, ``seed``)
  reach the engine's ``SamplingParams``; they are accepted by ``POST /generate`` too;
* **refused:** a field that would change the result and that the gateway does not implement
  (:data:`UNSUPPORTED`: penalties on output frequency, ``logit_bias``, ``echo``, tools, structured
  output, beam search...) is a 400 naming it — unless it carries its no-op value (``"echo": false``);
* **ignored, and said so:** any other field (``user``, ``metadata``, ``store``, a typo) is
  listed in the ``x-autothink-ignored-fields`` response header and logged once per name, as vLLM's
  server logs the fields it ignores (:func:`ignored_fields`).

Every value a client can send is checked here, so anything the engine later refuses is the
gateway's own fault (a 500 with a request id), never a parameter the client could have fixed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

Mode = Literal["auto", "think", "no_think"]
Effort = Literal["none", "minimal", "low", "medium", "high"]

#: The prompting strategy (autothink.prompting) behind each serving mode.
STRATEGY: dict[str, str] = {"auto": "ellipsis", "think": "standard", "no_think": "no_think"}

MAX_TEXT = 200_000  # characters of one prompt or message
MAX_MESSAGES = 2048  # messages of one conversation: each costs template tokens, refused before tokenising
MAX_STOP_TOKEN_IDS = 64


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
    model_config = ConfigDict(extra="allow")  # `name` and the like: reported by ignored_fields()
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="developer is OpenAI's newer name for system and is rendered as one; tool messages are refused (no tools here).")
    content: str = Field(max_length=MAX_TEXT)

    @field_validator("role", mode="before")
    @classmethod
    def _no_tools(cls, v: Any) -> Any:
        if v in ("tool", "function"):
            raise ValueError(f"role {v!r}: this gateway serves no tools (no function calling); send system, developer, user "
                             "and assistant messages only")
        return v

    @property
    def rendered_role(self) -> str:
        """The role the chat template sees (``developer`` is a system message to this model)."""
        return "system" if self.role == "developer" else self.role

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
    # vLLM's sampling extensions (what guidellm and `vllm bench serve` send)
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token, to max_tokens (vLLM).")
    min_tokens: int = Field(0, ge=0, description="Response tokens before the end of sequence (or a stop token) may end it (vLLM).")
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS, description="Token ids that end the response (vLLM).")
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0, description="vLLM's repetition penalty (1: none).")
    top_k: int | None = Field(None, ge=-1, description="Sample from the k most likely tokens (-1 or 0: all).")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="Drop tokens below this share of the most likely one's probability.")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: Stop) -> Stop:
        _stops(v)
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _check_stop_ids(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(t < 0 for t in v):
            raise ValueError("token ids are >= 0")
        return v

    @model_validator(mode="after")
    def _min_fits(self) -> SamplingFields:
        limit = getattr(self, "completion_limit", self.max_tokens)
        if limit is not None and self.min_tokens > limit:
            raise ValueError(f"min_tokens={self.min_tokens} is above the token limit {limit}")
        return self

    @property
    def changes_first_step(self) -> bool:
        """Whether a sampling control is set that the first-step processor does not model (vLLM
        applies penalties, top-k and min-p after logits processors): think_probability would not
        be the probability the first token is drawn with, so it is not measured."""
        return (self.repetition_penalty not in (None, 1.0) or self.top_k not in (None, -1, 0)
                or self.min_p not in (None, 0.0))

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
    messages: list[Message] | None = Field(None, min_length=1, max_length=MAX_MESSAGES, description="A conversation, instead of prompt.")
    mode: Mode = Field("auto", description="auto: the model decides (ellipsis prompt); think; no_think.")
    add_instruction: bool = Field(True, description="Append the boxed-answer instruction to `prompt`.")

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.think_threshold is not None and self.mode != "auto":
            raise ValueError("think_threshold applies to mode=auto only")
        if self.think_threshold is not None and self.changes_first_step:
            raise ValueError(_THRESHOLD_WITH_FIRST_STEP_CONTROLS)
        return self

    def resolved_mode(self) -> Mode:
        return "no_think" if self.reasoning_effort == "none" and self.mode == "auto" else self.mode


_THRESHOLD_WITH_FIRST_STEP_CONTROLS = ("think_threshold cannot be combined with repetition_penalty, top_k or min_p: the "
                                       "think probability is measured before vLLM applies them")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")  # continuous_usage_stats and the like: reported by ignored_fields()
    include_usage: bool = False


class ChatTemplateKwargs(BaseModel):
    """The part of ``chat_template_kwargs`` the gateway reads; other keys are reported as ignored."""

    model_config = ConfigDict(extra="allow")
    thinking: Literal["auto", "on", "off"] | bool | None = Field(None, description="auto, on (think), off (no_think), or a bool.")
    enable_thinking: bool | None = Field(
        None, description="The Qwen3 / vLLM switch: true = think, false = no_think, absent = auto (the model decides).")

    @model_validator(mode="after")
    def _agree(self) -> ChatTemplateKwargs:
        if self.thinking is not None and self.enable_thinking is not None:
            as_bool = {"on": True, "off": False, True: True, False: False}.get(self.thinking)  # type: ignore[call-overload]
            if as_bool is not self.enable_thinking:
                raise ValueError(f"chat_template_kwargs: thinking={self.thinking!r} and enable_thinking={self.enable_thinking!r} "
                                 "disagree; send one of them")
        return self


def _off(v: Any) -> bool:
    return v is None or v is False or v == 0 or v == [] or v == {} or v == ""


#: Fields of OpenAI's API or vLLM's that would change the result and that this gateway does not
#: implement, each with the test of its no-op value (sent by clients that fill in every default).
UNSUPPORTED: dict[str, Any] = {
    "frequency_penalty": _off, "presence_penalty": _off, "logit_bias": _off, "echo": _off, "suffix": _off,
    "best_of": lambda v: v in (None, 1), "use_beam_search": _off, "length_penalty": lambda v: v in (None, 1, 1.0),
    "response_format": lambda v: v is None or v == {"type": "text"}, "structured_outputs": _off,
    "guided_json": _off, "guided_regex": _off, "guided_choice": _off, "guided_grammar": _off,
    "tools": _off, "functions": _off, "tool_choice": lambda v: v in (None, "none", "auto"),
    "function_call": lambda v: v in (None, "none", "auto"), "prediction": _off, "audio": _off,
    "modalities": lambda v: v is None or v == ["text"], "prompt_logprobs": _off, "allowed_token_ids": _off,
    "bad_words": _off, "include_stop_str_in_output": _off, "skip_special_tokens": lambda v: v in (None, True),
    "spaces_between_special_tokens": lambda v: v in (None, True), "truncate_prompt_tokens": _off,
    "add_generation_prompt": lambda v: v in (None, True), "continue_final_message": _off, "add_special_tokens": _off,
    "chat_template": _off, "documents": _off, "return_tokens_as_token_ids": _off, "logprob_token_ids": _off,
    "mm_processor_kwargs": _off, "web_search_options": _off, "top_a": _off,
}


def _extras(model: BaseModel | None, prefix: str = "") -> list[str]:
    return [prefix + k for k in (model.model_extra or {})] if model is not None and model.model_extra else []


def ignored_fields(req: BaseModel) -> list[str]:
    """The request's fields the gateway does not use, sorted (nested ones dotted: ``messages.name``);
    a field of :data:`UNSUPPORTED` with a value that matters is a 400 naming it instead.

    >>> ignored_fields(ChatCompletionRequest(messages=[{"role": "user", "content": "q", "name": "ann"}], user="u1", echo=False))
    ['echo', 'messages.name', 'user']
    >>> ignored_fields(CompletionRequest(prompt="q", echo=True))
    Traceback (most recent call last):
    ...
    services.gateway.protocol.ApiError: echo=True is not supported by this gateway
    """
    top = req.model_extra or {}
    for name, value in top.items():  # the extras, usually none or few: not every entry of the table
        neutral = UNSUPPORTED.get(name)
        if neutral is not None and not neutral(value):
            raise ApiError(400, f"{name}={value!r} is not supported by this gateway"[:300], param=name, code="unsupported_parameter")
    names = set(top)
    for m in getattr(req, "messages", None) or []:
        names.update(_extras(m, "messages."))
    names.update(_extras(getattr(req, "stream_options", None), "stream_options."))
    names.update(_extras(getattr(req, "chat_template_kwargs", None), "chat_template_kwargs."))
    return sorted(names)


class ChatCompletionRequest(SamplingFields, AdaptiveFields):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
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
        if self.think_threshold is not None and self.changes_first_step:
            raise ValueError(_THRESHOLD_WITH_FIRST_STEP_CONTROLS)
        return self

    def resolved_mode(self) -> Mode:
        """``mode`` if given; else ``chat_template_kwargs.thinking``; else ``reasoning_effort="none"``
        → no_think; else auto.

        >>> ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], reasoning_effort="none").resolved_mode()
        'no_think'
        >>> [ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], chat_template_kwargs=k).resolved_mode()
        ...  for k in ({"enable_thinking": True}, {"enable_thinking": False}, {})]
        ['think', 'no_think', 'auto']
        """
        if self.mode is not None:
            return self.mode
        kwargs = self.chat_template_kwargs
        thinking = kwargs.thinking if kwargs else None
        if thinking is None and kwargs is not None:
            thinking = kwargs.enable_thinking
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
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: list[str] = Field(description="Raw prompt text, sent as is (special tokens in it are tokens), or a list of "
                              "them: n choices per prompt, prompt after prompt (choice index = prompt index x n + k).")
    max_tokens: int | None = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    logprobs: int | None = Field(None, ge=0, le=5, description="Return the log-probabilities of the sampled and the top tokens.")
    stream_options: StreamOptions | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, v: Any) -> Any:
        """One prompt or a list of them, as the OpenAI API takes (lm-eval sends batches); token-id
        lists are not taken.

        >>> CompletionRequest(prompt="1+1").prompt, CompletionRequest(prompt=["a", "b"]).prompt
        (['1+1'], ['a', 'b'])
        """
        prompts = [v] if isinstance(v, str) else v
        if not isinstance(prompts, list) or not all(isinstance(x, str) for x in prompts):
            raise ValueError("prompt must be a string or a list of strings (token ids are not taken)")
        if not prompts:
            raise ValueError("prompt is an empty list")
        for x in prompts:
            if len(x) > MAX_TEXT:
                raise ValueError(f"prompt is longer than {MAX_TEXT} characters")
            if not x:
                raise ValueError("prompt is empty")
        return prompts

    @model_validator(mode="after")
    def _one_prompt_streams(self) -> CompletionRequest:
        if self.stream and len(self.prompt) > 1:
            raise ValueError(f"a stream takes one prompt ({len(self.prompt)} sent): send the list without stream, "
                             "or one request per prompt")
        return self
