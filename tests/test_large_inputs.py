"""Images larger than CIFAR as a new user runs them: a folder of photos at 64x64 through the CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_folder_of_photos_at_64_px_through_the_cli(tmp_path: Path) -> None:
    """CNN6-W (full rank at 64 px by the rank analysis) on a 64x64 photo: matrix-free layers, >= 40 dB."""
    import skimage.data

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.asarray(skimage.data.astronaut())).save(photos / "astronaut.png")
    Image.fromarray(np.asarray(skimage.data.chelsea())).save(photos / "chelsea.jpg")
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "runners.attack", "model=cnn6w", "dataset=folder", f"dataset.path={photos}",
         "dataset.size=64", "index=1", "metrics.lpips=false", "threads=2", f"paths.results={results}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row_path,) = results.glob("runs/*/row.csv")
    row = next(csv.DictReader(row_path.open()))
    assert row["status"] == "ok" and row["indices"] == "1"
    assert float(row["psnr"]) >= 40.0
    assert ":cg:" in row["attack_info"] and "NOT-converged" not in row["attack_info"]
