"""Chunked log-probs and entropy equal the plain full-vocabulary computation: values, a GRPO loss
and its gradients (fp32, atol 1e-5), for every chunk size, temperature and head layout."""

import pytest
import torch

from autothink.grpo import policy_loss, token_entropy, token_logprobs
from autothink.logprobs import ChunkedLMHead, chunk_tokens_for, chunked_token_logprobs, install_chunked_head

ATOL = 1e-5


def _inputs(n=37, h=16, v=101, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float32)
    weight = torch.randn(v, h, generator=g) * 0.5
    b = torch.randn(v, generator=g) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, targets


def _plain(hidden, weight, bias, targets, temperature):
    logits = torch.nn.functional.linear(hidden, weight, bias)
    return token_logprobs(logits, targets, temperature), token_entropy(logits.float() / temperature)


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("bias", [False, True])
def test_values_equal_the_plain_computation(chunk, temperature, bias):
    hidden, weight, b, targets = _inputs(bias=bias)
    lp, ent = chunked_token_logprobs(hidden, weight, targets, temperature, b, chunk=chunk, with_entropy=True)
    ref_lp, ref_ent = _plain(hidden, weight, b, targets, temperature)
    assert lp.dtype == torch.float32 and lp.shape == targets.shape
    assert torch.allclose(lp, ref_lp, atol=ATOL), (lp - ref_lp).abs().max()
    assert torch.allclose(ent, ref_ent, atol=ATOL), (ent - ref_ent).abs().max()


@pytest.mark.parametrize("chunk", [1, 8, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("bias", [False, True])
def test_grpo_loss_and_gradients_equal_the_plain_computation(chunk, temperature, bias):
    """The PPO-clip loss on top, with clipped and unclipped tokens, and gradients for hidden states,
    weight and bias."""
    hidden, weight, b, targets = _inputs(n=24, bias=bias, seed=1)
    g = torch.Generator().manual_seed(2)
    old = _plain(hidden, weight, b, targets, temperature)[0] + 0.3 * torch.randn(24, generator=g)  # some ratios clip
    adv = torch.randn(24, generator=g)
    mask = (torch.rand(24, generator=g) > 0.2).float()

    def run(chunked: bool):
        hh, ww = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        bb = b.clone().requires_grad_() if b is not None else None
        if chunked:
            lp, _ = chunked_token_logprobs(hh, ww, targets, temperature, bb, chunk=chunk)
        else:
            lp = _plain(hh, ww, bb, targets, temperature)[0]
        loss, stats = policy_loss(lp.unsqueeze(0), old.unsqueeze(0), adv.unsqueeze(0), mask.unsqueeze(0))
        loss.backward()
        return loss.detach(), stats, [x.grad for x in (hh, ww, bb) if x is not None]

    loss_c, stats_c, grads_c = run(True)
    loss_p, stats_p, grads_p = run(False)
    assert 0 < stats_p.clip_fraction < 1  # both branches of the clip are exercised
    assert torch.allclose(loss_c, loss_p, atol=ATOL)
    for gc, gp in zip(grads_c, grads_p):
        assert gc.abs().sum() > 0
        assert torch.allclose(gc, gp, atol=ATOL), (gc - gp).abs().max()


def test_entropy_of_a_uniform_and_a_certain_distribution():
    """Worked numbers: zero weights give the uniform distribution (entropy log V, every
    log-prob -log V); one huge logit gives entropy ~0 and log-prob ~0 for that token."""
    v = 7
    hidden = torch.ones(3, 2)
    lp, ent = chunked_token_logprobs(hidden, torch.zeros(v, 2), torch.tensor([0, 3, 6]), with_entropy=True, chunk=2)
    assert torch.allclose(ent, torch.full((3,), torch.log(torch.tensor(7.0))), atol=1e-6)
    assert torch.allclose(lp, torch.full((3,), -torch.log(torch.tensor(7.0))), atol=1e-6)
    w = torch.zeros(v, 2)
    w[4] = 100.0
    lp, ent = chunked_token_logprobs(hidden, w, torch.tensor([4, 4, 4]), with_entropy=True)
    assert ent.abs().max() < 1e-6 and lp.abs().max() < 1e-6


def test_entropy_is_a_diagnostic_without_gradient():
    hidden, weight, _, targets = _inputs()
    hidden.requires_grad_()
    lp, ent = chunked_token_logprobs(hidden, weight, targets, with_entropy=True, chunk=8)
    assert lp.requires_grad and not ent.requires_grad


def test_bf16_matches_the_plain_bf16_head_within_bf16_precision():
    """In bf16 the logits are computed in bf16 as the model's own head does, then cast to fp32.

    The two sides multiply 7-row chunks and 20 rows at once: a CPU may pick another kernel (and
    so another fp32 accumulation order) for each, which can flip a logit's bf16 rounding by one
    ulp (2^-8 of its magnitude).  A log-softmax at temperature T moves by at most twice the largest
    logit change over T: that is the bound, not a tolerance that passed on one machine."""
    hidden, weight, _, targets = _inputs(n=20)
    hb, wb = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    lp, _ = chunked_token_logprobs(hb, wb, targets, 0.6, chunk=7)
    lp.sum().backward()
    hp, wp = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    ref = token_logprobs(torch.nn.functional.linear(hp, wp), targets, 0.6)
    ref.sum().backward()
    one_ulp = 2.0**-8 * torch.nn.functional.linear(hp, wp).detach().float().abs().max().item()
    assert (lp - ref).abs().max().item() <= 2 * one_ulp / 0.6 + 1e-6, ((lp - ref).abs().max(), one_ulp)
    assert hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    assert torch.allclose(hb.grad.float(), hp.grad.float(), atol=2e-2, rtol=2e-2)
    assert torch.allclose(wb.grad.float(), wp.grad.float(), atol=2e-2, rtol=2e-2)


def test_chunk_size_keeps_one_fp32_block_near_the_budget():
    assert chunk_tokens_for(151_936) * 151_936 * 4 <= 256 << 20
    assert chunk_tokens_for(151_936, 1 << 30) == 1766


def _tiny_qwen2(tie=False):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tie)
    return Qwen2ForCausalLM(cfg).float()


@pytest.mark.parametrize("tie", [False, True])
def test_installed_head_scores_selected_positions_like_the_full_logits(tie):
    """A real Qwen2: the patched forward on selected positions equals log_softmax of the model's
    own logits there, gradients of every parameter included; without targets it is unchanged."""
    model = _tiny_qwen2(tie)
    ids = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(3))
    targets = ids[:, 1:]
    select = torch.zeros(3, 11, dtype=torch.bool)
    select[0, 4:9] = True
    select[1, 2:11] = True
    select[2, 6:7] = True
    weights = torch.linspace(-1, 1, int(select.sum()))

    ref_logits = model(input_ids=ids, use_cache=False).logits
    ref = token_logprobs(ref_logits[:, :-1], targets, 0.6)[select]
    (ref * weights).sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    names = list(model.state_dict())

    install_chunked_head(model, chunk=4)
    assert isinstance(model.get_output_embeddings(), ChunkedLMHead) and list(model.state_dict()) == names
    if tie:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    full = torch.nn.functional.pad(ids, (0, 1))[:, 1:]  # targets padded to [B, T]
    sel = torch.nn.functional.pad(select, (0, 1))
    lp, ent = model(input_ids=ids, targets=full, select=sel, temperature=0.6, with_entropy=True)
    assert torch.allclose(lp, ref, atol=ATOL)
    assert torch.allclose(ent, token_entropy(ref_logits[:, :-1].float() / 0.6)[select], atol=ATOL)
    (lp * weights).sum().backward()
    for k, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[k], atol=ATOL), k
    assert torch.allclose(model(input_ids=ids, use_cache=False).logits, ref_logits)
