"""Light-transport consistency loss: zero when the predictions for I(L1), I(L2), I(L1+L2) agree, positive otherwise."""

from __future__ import annotations

import pytest
import torch

from relight_stream.train import model as M
from relight_stream.train.step import LossFn, consistency_loss

torch.set_num_threads(1)


def test_consistency_loss_is_zero_iff_predictions_agree_and_reaches_every_prediction():
    g = torch.Generator().manual_seed(0)
    same = torch.randn(1, 2, 4, 8, 8, generator=g).repeat(3, 1, 1, 1, 1)
    assert consistency_loss(same).item() == 0.0
    preds = same.clone().requires_grad_(True)
    with torch.no_grad():
        preds[2, 1, 0, 3, 3] += 1.0  # one element of one condition disagrees
    loss = consistency_loss(preds)
    assert loss.item() > 0
    # the spread around the mean: 1 element off by 1 among K=3 -> (2/3)^2 + 2 (1/3)^2 = 2/3 over all elements
    assert loss.item() == pytest.approx((2 / 3) / same.numel())
    loss.backward()
    assert all(preds.grad[k].abs().sum() > 0 for k in range(3))  # symmetric: no condition is a frozen anchor
    swapped = preds.detach()[[2, 0, 1]]
    assert consistency_loss(swapped).item() == pytest.approx(loss.item())


def _batch(images: dict[str, torch.Tensor]) -> dict:
    return {**images, "target": images["input"], "instruction": ["light from the left", "soft light"]}


def test_loss_fn_consistency_term_uses_the_three_lights_and_vanishes_when_they_agree():
    model = M.build_tiny("sd")
    null, _ = M.null_text(model, "cpu")
    fn = LossFn(model, resolution=32, text_dropout=0.0, image_dropout=0.0, null_embeds=null, null_pooled=None,
                consistency_weight=1.0)
    with torch.no_grad():  # a "trained" model: the image condition (zero-initialised conv_in channels) matters
        model.unet.conv_in.weight[:, 4:].normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g)
    other = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g)

    agree = _batch({"input": img, "input_l1": img.clone(), "input_l2": img.clone(), "input_l12": img.clone()})
    inp = fn.prepare(agree, "cpu", torch.Generator().manual_seed(1))
    assert len(inp.extra_conds) == 2  # input_l1 == input: the main prediction already is the L1 one
    with torch.no_grad():
        total, diff = fn(model.unet, inp)
    assert total.item() == pytest.approx(diff.item(), rel=1e-5, abs=1e-7)  # consistency term == 0

    differ = _batch({"input": img, "input_l1": img.clone(), "input_l2": other, "input_l12": img.clone()})
    inp = fn.prepare(differ, "cpu", torch.Generator().manual_seed(1))
    total, diff = fn(model.unet, inp)
    assert total.item() > diff.item()  # a different L2 input -> different predictions -> a positive term
    (total - diff).backward()  # the consistency term alone trains the image-condition channels
    assert model.unet.conv_in.weight.grad[:, 4:].abs().sum() > 0
