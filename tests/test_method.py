"""The method itself: per-token loss, selection, SLM loss, cached vs online reference scores."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rho


def tiny_model(seed=0, vocab=50, block=16):
    torch.manual_seed(seed)
    return rho.GPT(rho.GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=16))


def batch(seed=0, B=4, T=16, V=50):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, T + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]  # targets are the inputs shifted by one


def test_token_losses_are_shifted_next_token_losses():
    model = tiny_model()
    x, y = batch()
    logits = model(x)
    losses = rho.token_losses(logits, y)
    # position t predicts token t+1 of the sequence: -log softmax(logits[b, t])[x[b, t+1]]
    logp = torch.log_softmax(logits.float(), -1)
    for b, t in [(0, 0), (1, 5), (3, 15)]:
        assert torch.allclose(losses[b, t], -logp[b, t, y[b, t]], atol=1e-6)
    assert torch.equal(y[:, :-1], x[:, 1:])


@pytest.mark.parametrize("ratio", [0.01, 0.3, 0.5, 0.6, 0.77, 0.99])
def test_selection_keeps_exactly_round_kN_top_tokens(ratio):
    g = torch.Generator().manual_seed(1)
    student, ref = torch.rand(8, 33, generator=g) * 5, torch.rand(8, 33, generator=g) * 5
    score = rho.excess_loss(student, ref)
    mask = rho.select_topk(score, ratio)
    n = score.numel()
    k = math.floor(ratio * n + 0.5)
    assert mask.sum().item() == k
    kept, dropped = score[mask], score[~mask]
    assert kept.min() >= dropped.max()  # every kept token's excess loss >= every dropped one's
    # the same set as sorting by excess loss over the whole batch (not per row)
    top = set(torch.argsort(score.view(-1), descending=True)[:k].tolist())
    assert set(torch.nonzero(mask.view(-1)).view(-1).tolist()) == top


def test_excess_loss_is_student_minus_reference_and_detached():
    s = torch.tensor([[2.0, 1.0, 3.0]], requires_grad=True)
    r = torch.tensor([[1.0, 1.5, 0.5]])
    e = rho.excess_loss(s, r)
    assert torch.equal(e, torch.tensor([[1.0, -0.5, 2.5]]))
    assert not e.requires_grad
    assert rho.select_topk(e, 1 / 3).tolist() == [[False, False, True]]


def test_ratio_one_is_exactly_cross_entropy_mean_and_same_gradients():
    x, y = batch(2)
    m1, m2 = tiny_model(3), tiny_model(3)
    losses = rho.token_losses(m1(x), y)
    ours = rho.slm_loss(losses, rho.select_topk(torch.rand_like(losses), 1.0))
    ref = F.cross_entropy(m2(x).view(-1, 50), y.reshape(-1))
    assert torch.allclose(ours, ref, rtol=0, atol=1e-6)
    ours.backward()
    ref.backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1.grad, p2.grad, rtol=1e-5, atol=1e-8), n


def test_slm_loss_is_mean_over_selected_and_unselected_get_no_gradient():
    model = tiny_model(4)
    x, y = batch(5)
    logits = model(x)
    logits.retain_grad()
    losses = rho.token_losses(logits, y)
    mask = rho.select_topk(rho.excess_loss(losses, torch.rand_like(losses)), 0.4)
    loss = rho.slm_loss(losses, mask)
    assert torch.allclose(loss, losses[mask].mean(), atol=1e-7)
    loss.backward()
    grad_norm = logits.grad.norm(dim=-1)  # (B, T)
    assert torch.all(grad_norm[~mask] == 0)
    assert torch.all(grad_norm[mask] > 0)
    # the context is not masked: an input token whose own loss was dropped (x[b, s] is the target of
    # position s-1) still changes the loss of a later selected position
    b, s, t = next((b, s, t) for b, t in torch.nonzero(mask).tolist() for s in range(1, t) if not mask[b, s - 1])
    x2 = x.clone()
    x2[b, s] = (x[b, s] + 1) % 50
    assert not torch.allclose(rho.token_losses(model(x2), y)[b, t], losses[b, t])


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_soft_weighting_at_a_very_low_temperature_is_hard_topk(ratio):
    model = tiny_model(6)
    x, y = batch(7)
    losses = rho.token_losses(model(x), y)
    score = rho.excess_loss(losses, torch.rand_like(losses))
    mask = rho.select_topk(score, ratio)
    w = rho.soft_weights(score, ratio, temperature=1e-6)
    assert torch.equal(w, mask.float())
    hard, soft = rho.slm_loss(losses, mask), rho.slm_loss(losses, w)
    assert torch.allclose(hard, soft, rtol=0, atol=1e-7)
    # a warm temperature spreads the weight: every token counts, the top-k ones most, and the weights cross
    # 1/2 exactly where top-k cuts
    w = rho.soft_weights(score, ratio, temperature=0.5)
    assert torch.all(w > 0) and torch.all(w < 1)
    assert w[mask].min() > 0.5 > w[~mask].max()
    assert not torch.allclose(rho.slm_loss(losses, w), hard)


def test_margin_keeps_the_top_k_and_every_token_within_the_margin():
    # the answers late in a run: the student is ahead of the reference (excess -0.3), the noise far behind (-5)
    score = torch.tensor([[2.0, 0.5, -0.3, -0.3, -5.0, -6.0, -0.9, -1.5]])
    top = rho.select_topk(score, 0.25)  # the 2 highest only
    assert top.tolist() == [[True, True] + [False] * 6]
    assert torch.equal(rho.margin_mask(score, 0.25, 0.0), top)  # no margin: top-k (no other excess above 0)
    assert rho.margin_mask(score, 0.25, 1.0).tolist() == [[True, True, True, True, False, False, True, False]]
    valid = torch.tensor([[True, True, True, False, True, True, False, True]])  # --sft: among the valid only
    assert rho.margin_mask(score, 0.25, 1.0, valid).tolist() == [[True, True, True] + [False] * 5]


def run_batch(blocks, step):
    """Batch `step` of a run: what Trainer.step reads."""
    return blocks.read(blocks.block_ids(step))


def test_blocks_are_aligned_and_the_batch_is_a_pure_function_of_step():
    tokens = np.arange(1000, dtype=np.uint16)
    scores = np.arange(1000, dtype=np.float16)
    blocks = rho.Blocks(tokens, 16, 4, seed=7, ref_losses=[scores])
    x, y, ref, _ = run_batch(blocks, 3)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(ref, y.float())  # the score of a target token sits at that token's index
    assert torch.equal(run_batch(blocks, 3)[0], run_batch(rho.Blocks(tokens, 16, 4, seed=7), 3)[0])
    assert not torch.equal(run_batch(blocks, 3)[0], run_batch(rho.Blocks(tokens, 16, 4, seed=8), 3)[0])
    # one epoch visits every block exactly once
    n = blocks.n
    seen = np.concatenate([blocks.block_ids(s) for s in range(n // 4)])
    assert len(set(seen.tolist())) == len(seen) == n // 4 * 4


def test_cached_scores_equal_online_reference(tmp_path):
    import data
    ref = tiny_model(6, vocab=60, block=16)
    tokens = np.random.default_rng(0).integers(0, 60, 2000).astype(np.uint16)
    path = str(tmp_path / "scores.bin")
    rho.score_corpus(ref, tokens, 16, path, "cpu", batch_size=32, log=lambda *a: None)
    scores = np.memmap(path, dtype=np.float16, mode="r")
    assert np.isnan(scores[0]) and not np.isnan(scores[1:(len(tokens) - 1) // 16 * 16 + 1]).any()
    blocks = rho.Blocks(tokens, 16, 8, seed=1, ref_losses=[scores])
    for step in range(5):
        x, y, cached, _ = run_batch(blocks, step)
        with torch.no_grad():
            online = rho.token_losses(ref(x), y).half().float()  # what --ref_mode online computes
        assert torch.allclose(cached, online, atol=2e-3)
        student = torch.rand_like(online) * 4
        agree = (rho.select_topk(student - cached, 0.6) == rho.select_topk(student - online, 0.6)).float().mean()
        assert agree >= 0.99
    assert data  # imported for the package path


def test_combined_references_of_one_model_equal_that_model_and_cached_equals_online(tmp_path):
    refs = [tiny_model(s, vocab=60, block=16) for s in (6, 7)]
    tokens = np.random.default_rng(0).integers(0, 60, 2000).astype(np.uint16)
    files = []
    for i, ref in enumerate(refs):
        rho.score_corpus(ref, tokens, 16, str(tmp_path / f"s{i}.bin"), "cpu", batch_size=32, log=lambda *a: None)
        files.append(np.memmap(tmp_path / f"s{i}.bin", dtype=np.float16, mode="r"))
    plain = rho.Blocks(tokens, 16, 8, seed=1, ref_losses=files[:1])
    for how in ("mean", "min"):
        one = rho.Blocks(tokens, 16, 8, seed=1, ref_losses=files[:1], combine=how)
        two = rho.Blocks(tokens, 16, 8, seed=1, ref_losses=files, combine=how)
        for step in range(3):
            x, y, r1, _ = run_batch(one, step)
            assert torch.equal(r1, run_batch(plain, step)[2])
            r0, r1 = (run_batch(rho.Blocks(tokens, 16, 8, seed=1, ref_losses=[f]), step)[2] for f in files)
            both = run_batch(two, step)[2]
            assert torch.equal(both, (r0 + r1) / 2 if how == "mean" else torch.minimum(r0, r1))
            with torch.no_grad():
                online = rho.combine_refs([rho.token_losses(m(x), y).half().float() for m in refs], how)
            assert torch.allclose(both, online, atol=2e-3)


def test_extract_answer():
    import data
    assert data.extract_answer(" a = 3\n#### 12\n") == 12
    assert data.extract_answer("so The answer is 1,024.") == 1024
    assert data.extract_answer("#### -3") == -3
    assert data.extract_answer("no number here") is None


def test_kv_cache_generation_equals_full_recompute():
    model = tiny_model(8, vocab=50, block=32).eval()
    x, _ = batch(9, B=3, T=5)
    out = model.generate(x, 12)
    full = x
    with torch.no_grad():
        for _ in range(12):
            full = torch.cat([full, model(full)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, full)


def test_left_padded_batch_decodes_like_each_prompt_alone():
    """Questions of different lengths (GSM8K) are decoded in one batch, padded on the left: every row must decode
    exactly as it does alone (the padding is never attended and positions start after it)."""
    model = tiny_model(3, vocab=50, block=32).eval()
    prompts = [batch(s, B=1, T=n)[0][0].tolist() for s, n in ((1, 3), (2, 7), (3, 5))]
    n = max(map(len, prompts))
    pad = torch.tensor([n - len(p) for p in prompts])
    out = model.generate(torch.tensor([[0] * (n - len(p)) + p for p in prompts]), 10, pad=pad)
    for row, p in zip(out, prompts):
        alone = model.generate(torch.tensor([p]), 10)[0]
        assert row[n:].tolist() == alone[len(p):].tolist()
