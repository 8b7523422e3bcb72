"""Tests of rgap.evaluation.metrics and rgap.evaluation.images. Offline: LPIPS only ever runs with a random backbone."""

from __future__ import annotations

import math
import os
import warnings

import lpips as lpips_pkg
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from rgap.core.errors import UserInputError
from rgap.evaluation import metrics
from rgap.evaluation.images import rescale_minmax, save_image_grid
from rgap.evaluation.metrics import METRIC_NAMES, LpipsScorer, MetricResult, image_metrics


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def random_lpips() -> LpipsScorer:
    torch.manual_seed(0)
    scorer = LpipsScorer(net="alex", pretrained_backbone=False)
    assert scorer.available, scorer.reason
    return scorer


@pytest.fixture
def failing_lpips(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("simulated: no route to download.pytorch.org")

    monkeypatch.setattr(lpips_pkg, "LPIPS", boom)
    monkeypatch.setattr(metrics, "_WARNED", set())


# ---------------------------------------------------------------- MSE / PSNR


def test_constant_offset_gives_known_mse_and_psnr() -> None:
    original = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    result = image_metrics(original + 0.1, original)
    assert isinstance(result, MetricResult)
    assert set(result.values) == set(METRIC_NAMES) == set(result.per_image)
    assert result.values["mse"] == pytest.approx(0.01, rel=1e-9)
    assert result.values["psnr"] == pytest.approx(20.0, abs=1e-9)


def test_batch_value_is_mean_of_per_image_values() -> None:
    original = torch.full((2, 1, 8, 8), 0.5, dtype=torch.float64)
    offsets = torch.tensor([0.1, 0.2], dtype=torch.float64).view(2, 1, 1, 1)
    result = image_metrics(original + offsets, original)
    assert result.per_image["mse"] == pytest.approx([0.01, 0.04])
    assert result.per_image["psnr"] == pytest.approx([20.0, 10 * math.log10(1 / 0.04)])
    assert result.values["mse"] == pytest.approx(0.025)
    # PSNR of the batch is the mean of per-image PSNRs, not the PSNR of the mean MSE.
    assert result.values["psnr"] == pytest.approx((20.0 + 10 * math.log10(25)) / 2)
    assert len(result.per_image["ssim"]) == 2 and len(result.per_image["lpips"]) == 2


def test_reconstruction_is_clamped_before_scoring() -> None:
    original = torch.tensor([1.0, 0.1, 0.0, 0.5], dtype=torch.float32).view(1, 1, 2, 2)
    recon = torch.tensor([1.5, -0.2, 0.0, 0.5], dtype=torch.float32).view(1, 1, 2, 2)
    result = image_metrics(recon, original)
    # After clamping only the 0.1 -> 0.0 pixel differs: mse = 0.01 / 4.
    assert result.values["mse"] == pytest.approx(0.0025, rel=1e-6)


def test_identical_images_are_perfect() -> None:
    x = _rand(3, 3, 16, 16)
    result = image_metrics(x, x.clone())
    assert result.values["mse"] == 0.0
    assert result.values["psnr"] == math.inf
    assert result.per_image["psnr"] == [math.inf] * 3
    assert result.values["ssim"] == pytest.approx(1.0)


def test_one_perfect_image_makes_batch_psnr_inf() -> None:
    x = _rand(2, 1, 8, 8)
    recon = x.clone()
    recon[1] = (recon[1] + 0.05).clamp(0, 1)
    result = image_metrics(recon, x)
    assert result.per_image["psnr"][0] == math.inf
    assert math.isfinite(result.per_image["psnr"][1])
    assert result.values["psnr"] == math.inf


def test_lpips_not_requested() -> None:
    x = _rand(2, 3, 8, 8)
    result = image_metrics(x, x)
    assert result.values["lpips"] is None
    assert result.per_image["lpips"] == [None, None]
    assert result.reasons == {"lpips": "LPIPS not requested"}


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\).*\(1, 3, 8, 9\)"):
        image_metrics(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_nonfinite_reconstruction_gives_none_not_crash() -> None:
    x = _rand(2, 3, 8, 8)
    recon = x.clone()
    recon[0, 0, 0, 0] = float("nan")
    recon[1, 1, 2, 3] = float("inf")
    result = image_metrics(recon, x)
    for name in ("mse", "psnr", "ssim"):
        assert result.values[name] is None
        assert result.per_image[name] == [None, None]
        assert result.reasons[name] == "reconstruction contains NaN/inf"


def test_nonfinite_only_affects_its_own_image() -> None:
    x = _rand(2, 1, 8, 8)
    recon = x.clone()
    recon[0, 0, 0, 0] = float("nan")
    result = image_metrics(recon, x)
    assert result.per_image["mse"][0] is None and result.per_image["mse"][1] == 0.0
    assert result.values["mse"] is None


def test_any_dtype_is_accepted() -> None:
    x = _rand(1, 3, 8, 8)
    r64 = image_metrics(x + 0.01, x).values
    r16 = image_metrics((x + 0.01).to(torch.bfloat16), x.to(torch.float16)).values
    assert r16["mse"] == pytest.approx(r64["mse"], rel=0.5)


# ---------------------------------------------------------------- SSIM


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels: int) -> None:
    original = _rand(2, channels, 32, 32, seed=1)
    recon = (original + 0.1 * _rand(2, channels, 32, 32, seed=2) - 0.05).clamp(0, 1)
    result = image_metrics(recon, original)
    for i in range(2):
        a, b = recon[i].numpy(), original[i].numpy()
        if channels == 1:
            expected = structural_similarity(a[0], b[0], data_range=1.0)
        else:
            expected = structural_similarity(
                a.transpose(1, 2, 0), b.transpose(1, 2, 0), data_range=1.0, channel_axis=-1
            )
        assert result.per_image["ssim"][i] == pytest.approx(expected, abs=1e-12)
    assert result.values["ssim"] == pytest.approx(float(np.mean(result.per_image["ssim"])))


@pytest.mark.parametrize(("size", "win"), [(5, 5), (6, 5), (4, 3), (3, 3)])
def test_small_images_use_a_smaller_ssim_window(size: int, win: int) -> None:
    original = _rand(1, 1, size, size, seed=3)
    recon = _rand(1, 1, size, size, seed=4)
    result = image_metrics(recon, original)
    expected = structural_similarity(
        recon[0, 0].numpy(), original[0, 0].numpy(), data_range=1.0, win_size=win
    )
    assert result.values["ssim"] == pytest.approx(expected, abs=1e-12)


def test_ssim_undefined_below_3x3() -> None:
    x = _rand(1, 3, 2, 2)
    result = image_metrics(x, x)
    assert result.values["ssim"] is None
    assert "3x3" in result.reasons["ssim"]
    assert result.values["mse"] == 0.0


# ---------------------------------------------------------------- LPIPS


def test_random_backbone_keeps_the_shipped_linear_layers(random_lpips: LpipsScorer) -> None:
    path = os.path.join(os.path.dirname(lpips_pkg.__file__), "weights", "v0.1", "alex.pth")
    shipped = torch.load(path, map_location="cpu")
    model = random_lpips._model
    assert model is not None
    assert torch.equal(model.lin0.model[1].weight.cpu(), shipped["lin0.model.1.weight"])


def test_lpips_random_backbone_rgb_32(random_lpips: LpipsScorer) -> None:
    original = _rand(2, 3, 32, 32, seed=5).float()
    recon = _rand(2, 3, 32, 32, seed=6).float()
    scores = random_lpips.score(recon, original)
    assert len(scores) == 2 and all(s is not None and math.isfinite(s) and s > 0 for s in scores)
    same = random_lpips.score(original, original.clone())
    assert same == pytest.approx([0.0, 0.0], abs=1e-6)


def test_lpips_random_backbone_gray_28(random_lpips: LpipsScorer) -> None:
    # 28x28 is below AlexNet's 31x31 minimum: the scorer upsamples instead of crashing.
    original = _rand(3, 1, 28, 28, seed=7).float()
    recon = _rand(3, 1, 28, 28, seed=8).float()
    scores = random_lpips.score(recon, original)
    assert all(s is not None and math.isfinite(s) and s > 0 for s in scores)
    assert random_lpips.score(original, original) == pytest.approx([0.0] * 3, abs=1e-6)


def test_lpips_tiny_and_nonsquare_images(random_lpips: LpipsScorer) -> None:
    x, y = _rand(1, 3, 5, 12, seed=9).float(), _rand(1, 3, 5, 12, seed=10).float()
    (score,) = random_lpips.score(x, y)
    assert score is not None and math.isfinite(score)


def test_image_metrics_with_lpips(random_lpips: LpipsScorer) -> None:
    original = _rand(2, 3, 32, 32, seed=11)
    recon = original.clone()
    recon[1] = _rand(3, 32, 32, seed=12)
    recon[0, 0, 0, 0] = float("nan")
    result = image_metrics(recon, original, lpips=random_lpips)
    assert result.per_image["lpips"][0] is None
    assert result.per_image["lpips"][1] is not None and result.per_image["lpips"][1] > 0
    assert result.values["lpips"] is None
    assert result.reasons["lpips"] == "reconstruction contains NaN/inf"

    clean = image_metrics(original, original, lpips=random_lpips)
    assert clean.values["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert "lpips" not in clean.reasons


def test_lpips_load_failure_says_one_line_once_and_returns_none(failing_lpips: None, capsys) -> None:
    x = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = LpipsScorer()
        assert scorer.available is False
        assert scorer.score(x, x) == [None, None]
        second = LpipsScorer()
        result = image_metrics(x, x, lpips=second)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1  # one line, printed once per process
    message = captured.err
    assert "alexnet-owt-7be5be79.pth" in message and "metrics.lpips=false" in message and "LPIPS is off" in message
    assert scorer.reason is not None and "\n" not in scorer.reason
    assert "could not be loaded offline" in scorer.reason and "OSError" in scorer.reason
    assert result.values["lpips"] is None and result.per_image["lpips"] == [None, None]
    assert result.reasons["lpips"] == second.reason
    assert result.values["mse"] == 0.0


def test_lpips_load_failure_with_require_raises(failing_lpips: None) -> None:
    scorer = LpipsScorer(require=True)
    with pytest.raises(UserInputError, match="require_lpips") as info:
        scorer.score(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    text = str(info.value)
    assert os.path.join(torch.hub.get_dir(), "checkpoints") in text
    assert "alexnet-owt-7be5be79.pth" in text and "simulated" in text


def test_unknown_lpips_net_is_user_error() -> None:
    with pytest.raises(UserInputError, match="nope"):
        LpipsScorer(net="nope")


def test_backbone_file_names_match_torchvision() -> None:
    from torchvision import models

    urls = {
        "alex": models.AlexNet_Weights.IMAGENET1K_V1.url,
        "vgg": models.VGG16_Weights.IMAGENET1K_V1.url,
        "squeeze": models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url,
    }
    for net, url in urls.items():
        assert url.rsplit("/", 1)[-1] == metrics._BACKBONE_FILES[net]


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(("channels", "mode"), [(3, "RGB"), (1, "L")])
def test_save_image_grid_size(tmp_path, channels: int, mode: str) -> None:
    images = _rand(5, channels, 32, 32, seed=13) * 1.4 - 0.2  # out of range: must be clamped
    path = tmp_path / "sub" / "grid.png"
    save_image_grid(images, path, nrow=3, upscale=4)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == mode
        # 3 columns x 2 rows of 128x128 tiles with 2-pixel padding.
        assert img.size == (3 * (128 + 2) + 2, 2 * (128 + 2) + 2)
        pixels = np.asarray(img)
    assert pixels[0, 0].tolist() == ([255] * 3 if channels == 3 else 255)  # white padding


def test_save_image_grid_default_layout_and_upscale(tmp_path) -> None:
    path = tmp_path / "g.png"
    save_image_grid(torch.zeros(4, 1, 28, 28), path)  # nrow defaults to ceil(sqrt(4)) = 2
    with Image.open(path) as img:
        assert img.size == (2 * (28 * 4 + 2) + 2,) * 2
        tile = np.asarray(img)[2 : 2 + 112, 2 : 2 + 112]
    assert (tile == 0).all()


def test_save_image_grid_nearest_neighbour(tmp_path) -> None:
    image = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    path = tmp_path / "nn.png"
    save_image_grid(image, path, upscale=3)
    with Image.open(path) as img:
        assert img.size == (2 * 3 + 4, 2 * 3 + 4)  # a single image is padded too
        pixels = np.asarray(img)
    inner = pixels[2:8, 2:8]
    assert (inner[:3, :3] == 0).all() and (inner[:3, 3:] == 255).all()
    assert (inner[3:, :3] == 255).all() and (inner[3:, 3:] == 0).all()
    assert (pixels[:2] == 255).all() and (pixels[:, -2:] == 255).all()


def test_rescale_minmax() -> None:
    images = torch.stack([_rand(3, 8, 8, seed=14) * 0.3 + 0.5, _rand(3, 8, 8, seed=15) * 4 - 2])
    out = rescale_minmax(images)
    assert out.shape == images.shape
    for i in range(2):
        assert out[i].min().item() == pytest.approx(0.0)
        assert out[i].max().item() == pytest.approx(1.0)
    # (x - min) / (max - min), not the reference's (x - min) / max.
    x = images[0]
    assert torch.allclose(out[0], (x - x.min()) / (x.max() - x.min()))


def test_rescale_minmax_constant_image_is_zero() -> None:
    images = torch.stack([torch.full((1, 4, 4), 0.7), torch.linspace(0, 2, 16).view(1, 4, 4)])
    out = rescale_minmax(images)
    assert torch.equal(out[0], torch.zeros(1, 4, 4))
    assert out[1].max().item() == pytest.approx(1.0)
