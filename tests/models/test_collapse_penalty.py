import torch

from vlv_pipeline.models.stage1 import collapse_penalty


def test_collapsed_embeddings_score_one_and_spread_ones_near_zero():
    same = torch.ones(8, 16, 32)
    assert torch.isclose(collapse_penalty(same), torch.tensor(2.0))
    torch.manual_seed(0)
    spread = torch.randn(8, 16, 32)
    assert collapse_penalty(spread).abs() < 0.1


def test_gradient_pushes_a_collapsed_encoder_apart():
    torch.manual_seed(0)
    embeddings = (torch.ones(4, 3, 8) + 0.01 * torch.randn(4, 3, 8)).requires_grad_()
    before = collapse_penalty(embeddings).item()
    optimizer = torch.optim.Adam([embeddings], lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        collapse_penalty(embeddings).backward()
        optimizer.step()
    assert collapse_penalty(embeddings).item() < before - 0.1
