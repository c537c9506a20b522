"""The method itself: per-token loss, selection, SLM loss, cached vs online reference scores, decoding."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import data_real
import rho


def tiny_model(seed=0, vocab=50, block=16):
    torch.manual_seed(seed)
    return rho.GPT(rho.GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=16))


def batch(seed=0, B=4, T=16, V=50):
    tokens = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]  # targets are the inputs shifted by one


def test_token_losses_are_shifted_next_token_losses():
    x, y = batch()
    logits, losses = tiny_model()(x), tiny_model()(x, y)  # the training step's forward: the losses
    # position t predicts token t+1 of the sequence: -log softmax(logits[b, t])[x[b, t+1]]
    assert torch.equal(rho.token_losses(logits, y), losses)
    assert torch.allclose(losses, -torch.log_softmax(logits.float(), -1).gather(-1, y[..., None])[..., 0], atol=1e-6)


@pytest.mark.parametrize("ratio", [0.01, 0.3, 0.5, 0.6, 0.77, 0.99])
def test_excess_loss_and_its_top_k_over_the_whole_batch(ratio):
    g = torch.Generator().manual_seed(1)
    student, ref = torch.rand(8, 33, generator=g).requires_grad_() * 5, torch.rand(8, 33, generator=g) * 5
    score = rho.excess_loss(student, ref)
    assert torch.equal(score, student.detach() - ref) and not score.requires_grad  # no gradient through selection
    mask, k = rho.select_topk(score, ratio), math.floor(ratio * score.numel() + 0.5)
    top = torch.argsort(score.view(-1), descending=True)[:k]  # sorted by excess loss over the whole batch, not per row
    assert mask.sum().item() == k and torch.all(mask.view(-1)[top])


def test_slm_loss_is_the_mean_over_the_selected_and_only_they_get_gradients():
    x, y = batch(2)  # ratio 1: exactly the cross-entropy mean, with the same gradients
    m1, m2 = tiny_model(3), tiny_model(3)
    losses = rho.token_losses(m1(x), y)
    ours = rho.slm_loss(losses, rho.select_topk(torch.rand_like(losses), 1.0))
    ref = F.cross_entropy(m2(x).view(-1, 50), y.reshape(-1))
    assert torch.allclose(ours, ref, rtol=0, atol=1e-6)
    ours.backward()
    ref.backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1.grad, p2.grad, rtol=1e-5, atol=1e-8), n
    model, (x, y) = tiny_model(4), batch(5)
    logits = model(x)
    logits.retain_grad()
    losses = rho.token_losses(logits, y)
    mask = rho.select_topk(rho.excess_loss(losses, torch.rand_like(losses)), 0.4)
    loss = rho.slm_loss(losses, mask)
    assert torch.allclose(loss, losses[mask].mean(), atol=1e-7)
    loss.backward()
    grad_norm = logits.grad.norm(dim=-1)  # (B, T)
    assert torch.all(grad_norm[~mask] == 0) and torch.all(grad_norm[mask] > 0)
    # the context is not masked: an input whose own loss was dropped still changes a later selected position's
    b, s, t = next((b, s, t) for b, t in torch.nonzero(mask).tolist() for s in range(1, t) if not mask[b, s - 1])
    x2 = x.clone()
    x2[b, s] = (x[b, s] + 1) % 50
    assert not torch.allclose(rho.token_losses(model(x2), y)[b, t], losses[b, t])
    # an empty selection gives 0 and no gradient; an unselected inf stays out (no nan), with soft weights too
    losses = torch.tensor([[1.0, 2.0], [3.0, float("inf")]], requires_grad=True)
    loss = rho.slm_loss(losses, torch.zeros(2, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(losses.grad, torch.zeros(2, 2))
    assert rho.slm_loss(losses, torch.tensor([[True, False], [True, False]])).item() == 2.0
    assert rho.slm_loss(losses, torch.tensor([[0.5, 0.0], [0.5, 0.0]])).item() == 2.0


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_soft_weighting_at_a_very_low_temperature_is_hard_topk(ratio):
    x, y = batch(7)
    losses = rho.token_losses(tiny_model(6)(x), y)
    score = rho.excess_loss(losses, torch.rand_like(losses))
    mask, w = rho.select_topk(score, ratio), rho.soft_weights(score, ratio, temperature=1e-6)
    assert torch.equal(w, mask.float())
    hard = rho.slm_loss(losses, mask)
    assert torch.allclose(hard, rho.slm_loss(losses, w), rtol=0, atol=1e-7)
    # a warm temperature: every token counts, the top-k ones most, the weights crossing 1/2 where top-k cuts
    w = rho.soft_weights(score, ratio, temperature=0.5)
    assert torch.all(w > 0) and torch.all(w < 1) and w[mask].min() > 0.5 > w[~mask].max()
    assert not torch.allclose(rho.slm_loss(losses, w), hard)


def test_blocks_are_aligned_the_batch_is_a_function_of_step_and_cached_scores_equal_the_online_reference(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    blocks = rho.Blocks(tokens, 16, 4, seed=7, ref_losses=np.arange(1000, dtype=np.float16))
    x, y, ref, _ = blocks.read(blocks.block_ids(3))
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(ref, y.float())  # the score of a target token sits at that token's index
    for seed in (7, 8):
        other = rho.Blocks(tokens, 16, 4, seed=seed)
        assert torch.equal(x, other.read(other.block_ids(3))[0]) == (seed == 7)
    seen = np.concatenate([blocks.block_ids(s) for s in range(blocks.n // 4)])  # one epoch: every block once
    assert len(set(seen.tolist())) == len(seen) == blocks.n // 4 * 4
    ref = tiny_model(6, vocab=60, block=16)
    tokens = np.random.default_rng(0).integers(0, 60, 2000).astype(np.uint16)
    rho.score_corpus(ref, tokens, 16, str(tmp_path / "scores.bin"), "cpu", batch_size=32, log=lambda *a: None)
    scores = np.memmap(tmp_path / "scores.bin", dtype=np.float16, mode="r")
    assert np.isnan(scores[0]) and not np.isnan(scores[1:(len(tokens) - 1) // 16 * 16 + 1]).any()
    blocks = rho.Blocks(tokens, 16, 8, seed=1, ref_losses=scores)
    for step in range(5):
        x, y, cached, _ = blocks.read(blocks.block_ids(step))
        with torch.no_grad():
            online = rho.token_losses(ref(x), y).half().float()  # what --ref_mode online computes
        assert torch.allclose(cached, online, atol=2e-3)
        student = torch.rand_like(online) * 4
        agree = (rho.select_topk(student - cached, 0.6) == rho.select_topk(student - online, 0.6)).float().mean()
        assert agree >= 0.99


def test_answers_are_read_from_generated_text_and_from_dataset_answers():
    texts = (" a = 3\n#### 12\n", "so The answer is 1,024.", "#### -3", "no number here")
    assert [data.extract_answer(t) for t in texts] == [12, 1024, -3, None]
    answers = ["so 3 + 4 = <<3+4=7>>7\n#### 7", "The answer is 1,234.", 42, " 12 ", "no number"]
    assert [data_real.final_number(a) for a in answers] == [7, 1234, 42, 12, None]


def test_kv_cache_decoding_equals_full_recompute_and_a_left_padded_batch_each_prompt_alone():
    model, (x, _) = tiny_model(8, vocab=50, block=32).eval(), batch(9, B=3, T=5)
    full = x
    with torch.no_grad():
        for _ in range(12):
            full = torch.cat([full, model(full)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(model.generate(x, 12), full)
    prompts = [batch(s, B=1, T=n)[0][0].tolist() for s, n in ((1, 3), (2, 7), (3, 5))]  # GSM8K's lengths vary
    n = max(map(len, prompts))
    out = model.generate(torch.tensor([[0] * (n - len(p)) + p for p in prompts]), 10,
                         pad=torch.tensor([n - len(p) for p in prompts]))
    for row, p in zip(out, prompts):
        assert row[n:].tolist() == model.generate(torch.tensor([p]), 10)[0][len(p):].tolist()
