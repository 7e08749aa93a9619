"""Images sized as open_clip's eval transform of the weights' pretrained config sizes them (issue 17):
every interpolation and resize mode, odd sizes, up- and downscaling, against open_clip itself."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from starft_pipeline.data.images import resize_and_crop
from starft_pipeline.data.splits import load_image, normalise_images

SIZES = [(45, 31), (31, 45), (50, 50), (20, 37), (33, 32), (65, 40), (32, 32)]


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_pixels_match_open_clips_eval_transform(width, height, interpolation, mode):
    config = PreprocessCfg(size=32, interpolation=interpolation, resize_mode=mode, mean=(0.4, 0.5, 0.6), std=(0.2,) * 3)
    image = _image(width, height)
    expected = image_transform_v2(config, is_train=False)(image)
    ours = resize_and_crop(image, 32, interpolation, mode)
    pixels = torch.from_numpy(np.asarray(ours).copy()).permute(2, 0, 1)[None]
    assert ours.size == (32, 32)
    torch.testing.assert_close(normalise_images(pixels, config.mean, config.std)[0], expected, rtol=0, atol=1e-5)


def test_an_image_at_the_input_size_is_left_as_it_is():
    image = _image(32, 32, seed=3)
    for mode in ("shortest", "squash", "longest"):
        assert resize_and_crop(image, 32, "bilinear", mode).tobytes() == image.tobytes()


def test_load_image_takes_the_weights_preprocessing():
    buffer = io.BytesIO()
    _image(45, 31).save(buffer, format="PNG")
    squashed = load_image(io.BytesIO(buffer.getvalue()), 16, "bilinear", "squash")
    expected = np.asarray(_image(45, 31).resize((16, 16), Image.Resampling.BILINEAR))
    assert torch.equal(squashed, torch.from_numpy(expected.copy()).permute(2, 0, 1))
    assert not torch.equal(load_image(io.BytesIO(buffer.getvalue()), 16), squashed)  # default: shortest, bicubic


def test_an_unknown_setting_is_named():
    with pytest.raises(ValueError, match="interpolation must be one of"):
        resize_and_crop(_image(8, 8), 4, "lanczos")
    with pytest.raises(ValueError, match="resize mode must be one of"):
        resize_and_crop(_image(8, 8), 4, "bicubic", "crop")
