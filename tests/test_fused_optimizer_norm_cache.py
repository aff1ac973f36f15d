"""A fused optimizer step (torch.optim.AdamW(fused=True): the HF Trainer's default optimizer, adamw_torch_fused,
in transformers 5) updates lora_A/lora_B without bumping their version counters, which the cached DoRA row norm
is keyed on (masked_dora.nn.norm_cache): the next forward must still use the norm of the updated weights."""

import pytest
import torch

from masked_dora.nn import MaskedDoRALinear


@pytest.mark.parametrize("fused", [False, True])
def test_an_optimizer_step_refreshes_the_row_norm(fused):
    torch.manual_seed(0)
    layer = MaskedDoRALinear.from_linear(torch.nn.Linear(16, 8), rank=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.invalidate_norm_cache()
    x = torch.randn(3, 16)
    optimizer = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=0.1, fused=fused)
    layer(x).sum().backward()
    optimizer.step()
    layer.eval()  # no gate noise: the two forwards below differ only by the norm they use
    with torch.no_grad():
        after_step = layer(x)
        layer.invalidate_norm_cache()
        torch.testing.assert_close(after_step, layer(x))
