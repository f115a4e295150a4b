"""Log-probs and entropy of the chosen tokens without full-vocabulary logits.

The plain computation (:func:`autothink.grpo.token_logprobs`) takes the model's ``[B, T, V]``
logits and makes fp32 copies of them (cast, temperature, ``log_softmax``, entropy).  With the R1
vocabulary (V = 151,936) one fp32 copy of a 16k-token sequence is ~10 GB, so the learner cannot
reach the paper's 8k / 16k / 24k-token responses that way.

Here the LM head is applied to the final hidden states ``chunk`` tokens at a time inside one
:class:`torch.autograd.Function`:

* forward keeps, per token, only the chosen token's log-prob, the log-sum-exp and (if asked) the
  entropy — ``[N]`` floats — and drops each ``[chunk, V]`` block of logits at once;
* backward recomputes each chunk's logits from the saved hidden states and LM-head weight and turns
  them into the gradient ``d logp / d z = onehot - softmax(z)`` chunk by chunk.

So the memory of this step is O(chunk × V) instead of O(T × V), for one extra LM-head matmul in
backward (the same trade as prime-rl's chunked log-probs; verl and OpenRLHF fuse the same idea into
their "remove padding" paths).  The numbers equal the plain computation (tests/unit/test_logprobs.py
checks log-probs, entropy, a GRPO loss and its gradients at atol 1e-5 in fp32).

Temperature is applied as the sampler applied it: ``z = (h W^T + b) / temperature``, the logits
cast to fp32 first, so the learner's log-probs are those of the distribution the rollouts were
drawn from.  The entropy is that distribution's entropy, a diagnostic: no gradient flows through it.

:func:`install_chunked_head` wires this into a Hugging Face causal LM so that DeepSpeed's hooks
(ZeRO-3 gathers a module's parameters around its forward and backward) still see every parameter
used inside a module call.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

#: Bytes one fp32 ``[chunk, V]`` block may take; the forward holds about three such blocks at once.
DEFAULT_CHUNK_BYTES = 256 << 20


def chunk_tokens_for(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Tokens per chunk so one fp32 ``[chunk, V]`` block is about ``chunk_bytes``.

    >>> chunk_tokens_for(151_936)
    441
    >>> chunk_tokens_for(100)
    4096
    """
    return max(16, min(4096, chunk_bytes // (4 * vocab_size)))


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """fp32 logits of one chunk, ``[c, H] -> [c, V]``, computed in the weight's dtype as the LM head does,
    then cast and divided by the temperature (in place: the only ``[c, V]`` copy)."""
    z = F.linear(h, weight, bias).float()
    if temperature != 1.0:
        z.div_(temperature)
    return z


class ChunkedTokenLogprobs(torch.autograd.Function):
    """``(hidden [N, H], weight [V, H], bias [V] | None, targets [N]) -> (logp [N], entropy [N])``.

    Both outputs are fp32.  ``entropy`` is zeros unless ``with_entropy``; it is not differentiable.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        temperature: float,
        chunk: int,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = _chunk_logits(hidden[s:e], weight, bias, temperature)
            lse_c = torch.logsumexp(z, dim=-1)
            lse[s:e] = lse_c
            logp[s:e] = z.gather(-1, targets[s:e].unsqueeze(-1)).squeeze(-1) - lse_c
            if with_entropy:
                # H = -sum p log p = lse - sum p z, with p = exp(z - lse)
                p = torch.exp(z - lse_c.unsqueeze(-1))
                entropy[s:e] = lse_c - (p * z).sum(-1)
                del p
            del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor, _grad_entropy: torch.Tensor | None) -> tuple:  # type: ignore[override]
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        # accumulated in fp32 over the chunks, cast once at the end (bf16 sums would lose the small ones)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        grad_logp = grad_logp.float()
        n = hidden.shape[0]
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            g_out = grad_logp[s:e].unsqueeze(-1)  # [c, 1]
            # d logp_t / d z = onehot(t) - softmax(z); z = raw / T, so d / d raw = that / T
            g = _chunk_logits(hidden[s:e], weight, bias, temperature)
            g.sub_(lse[s:e].unsqueeze(-1)).exp_().mul_(-g_out)
            g.scatter_add_(-1, targets[s:e].unsqueeze(-1), g_out)
            if temperature != 1.0:
                g.div_(temperature)
            g_low = g.to(weight.dtype)
            if need_h:
                grad_h[s:e] = g_low @ weight
            if need_w:
                if weight.dtype == torch.float32:
                    grad_w.addmm_(g_low.t(), hidden[s:e])
                else:
                    grad_w += (g_low.t() @ hidden[s:e]).float()
            if need_b:
                grad_b += g.sum(0)
            del g, g_low
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None, None, None, None,
        )


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
    chunk: int | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target and the entropy at each position, from hidden states.

    hidden: ``[..., H]`` final hidden states (after the last norm) at the positions that predict
    ``targets`` ``[...]``; weight ``[V, H]`` (and bias ``[V]``) of the LM head.  Returns
    ``(logp, entropy)``, each fp32 of ``targets``' shape.  Equal to
    ``token_logprobs(lm_head(hidden), targets, temperature)`` without its ``[..., V]`` tensors.
    """
    shape = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    c = chunk or chunk_tokens_for(weight.shape[0])
    logp, ent = ChunkedTokenLogprobs.apply(h, weight, bias, t, float(temperature), int(c), bool(with_entropy))
    return logp.reshape(shape), ent.reshape(shape)


class ChunkedLMHead(torch.nn.Linear):
    """An ``nn.Linear`` LM head that, given ``targets``, returns ``(logp, entropy)`` chunk by chunk
    instead of logits.  Without ``targets`` it is the plain linear layer (generation, evaluation).

    Being the same module that owns the weight matters under ZeRO-3: DeepSpeed gathers a module's
    parameters around that module's forward and backward, so the chunked computation runs inside it.
    """

    chunk: int | None = None

    def forward(  # type: ignore[override]
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor | None = None,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if targets is None:
            return super().forward(hidden)
        return chunked_token_logprobs(hidden, self.weight, targets, temperature, self.bias, self.chunk, with_entropy)


def install_chunked_head(model: torch.nn.Module, chunk: int | None = None) -> None:
    """Give a Hugging Face causal LM a chunked LM head and a forward that scores chosen tokens.

    The head is replaced by a :class:`ChunkedLMHead` holding the *same* parameter objects (names,
    state dicts and tied embeddings are unchanged).  ``model(input_ids, targets=..., select=...)``
    then returns ``(logp [N], entropy [N])`` for the ``N`` positions where ``select`` ``[B, T]`` is
    true, ``targets`` ``[B, T]`` being the next token at each position; with ``probe`` (flat
    indices into ``[B * T]``) and ``probe_targets`` ``[E]``, E more values follow: the log-prob of a
    chosen token at a chosen position (the learner's mode floor asks for ``</think>`` at each
    sample's decision position).  Called without ``targets`` the model behaves as before.  Only the selected positions reach the LM head, so prompt and
    padding positions cost no vocabulary-sized work at all.
    """
    old = model.get_output_embeddings()
    head = ChunkedLMHead(old.in_features, old.out_features, bias=old.bias is not None, device="meta")
    head.weight = old.weight
    if old.bias is not None:
        head.bias = old.bias
    head.chunk = chunk
    model.set_output_embeddings(head)
    plain_forward = model.forward

    def forward(
        self: torch.nn.Module,
        input_ids: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        select: torch.Tensor | None = None,
        temperature: float = 1.0,
        with_entropy: bool = False,
        position_ids: torch.Tensor | None = None,
        probe: torch.Tensor | None = None,
        probe_targets: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if targets is None:
            return plain_forward(input_ids=input_ids, position_ids=position_ids, **kwargs)
        out = self.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False, **kwargs)
        hidden = out.last_hidden_state  # [B, T, H]
        flat = hidden.reshape(-1, hidden.shape[-1])
        if select is not None:
            hidden, targets = hidden[select], targets[select]  # [N, H], [N]
        if probe is not None:  # E more rows: the log-prob of probe_targets[e] at flat position probe[e]
            hidden = torch.cat([hidden.reshape(-1, hidden.shape[-1]), flat[probe]])
            targets = torch.cat([targets.reshape(-1), probe_targets])
        return self.get_output_embeddings()(hidden, targets=targets, temperature=temperature, with_entropy=with_entropy)

    model.forward = types.MethodType(forward, model)
