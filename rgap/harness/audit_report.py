"""``audit.md`` and ``audit.png`` of an :class:`~rgap.harness.audit.Audit`."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from rgap.core.atomic import atomic_save, atomic_write_text  # noqa: E402
from rgap.harness.audit import Audit, verdict_paragraph  # noqa: E402


def _cell(value: float | int | None, spec: str = ",") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def audit_markdown(audit: Audit) -> str:
    """The report: verdict, per-layer table, per-attack medians, gallery."""
    shape = "x".join(map(str, audit.input_shape))
    lines = [f"# Audit: {audit.model} ({shape} input, {audit.parameters:,} parameters)", "", "## Verdict", "",
             verdict_paragraph(audit), "", "## Layers", "",
             "Each layer's input is solved from its gradient constraints (one per weight), its weight constraints "
             "(one per output) and what the layers below carry up; the numerical rank of that system at a seeded "
             "operating point decides whether R-GAP recovers the input exactly.", "",
             "| layer | unknowns | constraints: gradient | output | from below | numerical rank | deficiency | "
             "predicted by counts | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in audit.layers:
        lines.append(f"| {row.layer} | {row.x:,} | {row.w:,} | {row.z:,} | {row.v:,} | {_cell(row.rank)} | "
                     f"{_cell(row.deficiency)} | {row.predicted} | {row.note} |")
    lines += ["", "In words:", ""] + [f"- {v.text}" for v in audit.verdicts]
    lines += ["", f"## Attacks (images 0..{audit.images - 1}, one at a time)", "",
              "| attack | ok | median PSNR (dB) | median SSIM | median seconds | not ok because |",
              "|---|---:|---:|---:|---:|---|"]
    for summary in audit.attacks:
        lines.append(f"| {summary.label} | {summary.ok}/{len(summary.rows)} | {_cell(summary.psnr, '.1f')} | "
                     f"{_cell(summary.ssim, '.4f')} | {_cell(summary.seconds, '.2f')} | "
                     f"{'; '.join(summary.reasons)} |")
    lines += ["", "## Gallery", "", "![gallery](audit.png)", "",
              "Rows: images; columns: the original, then each attack's reconstruction with its PSNR. Each trial's "
              "row.csv and images are under trials/<attack>_<index>/.", ""]
    return "\n".join(lines)


def audit_figure(audit: Audit, path: Path) -> Path:
    """The gallery: one row per image, the original then each attack's reconstruction (PSNR below)."""
    columns = 1 + len(audit.attacks)
    size = (max(1.5 * columns, 3.6), 1.6 * audit.images)
    fig, axes = plt.subplots(audit.images, columns, figsize=size, squeeze=False)
    for index in range(audit.images):
        first = audit.attacks[0] if audit.attacks else None
        origin = audit.trials_dir / f"{first.attack}_{index}" / "origin.png" if first else None
        _show(axes[index, 0], origin, "original" if index == 0 else None)
        axes[index, 0].set_ylabel(f"image {index}", fontsize=8)
        for column, summary in enumerate(audit.attacks, start=1):
            row = summary.rows[index]
            ax = axes[index, column]
            _show(ax, audit.trials_dir / f"{summary.attack}_{index}" / "reconstructed.png",
                  summary.label if index == 0 else None)
            text = f"{_cell(row.get('psnr'), '.1f')} dB" if row["status"] == "ok" else row["status"]
            ax.set_xlabel(text, fontsize=8)
    title = f"{audit.model}: reconstructions from one shared gradient"
    if columns < 4:  # too narrow for one line
        title = title.replace(": ", ":\n", 1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    plt.close(fig)
    return path


def _show(ax, image_path: Path | None, title: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    if image_path is not None and image_path.is_file():
        image = mpimg.imread(image_path)
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    else:
        ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=7, transform=ax.transAxes)


def write_audit(audit: Audit, out_dir: Path) -> list[Path]:
    """``audit.md`` and ``audit.png`` in ``out_dir``."""
    figure = audit_figure(audit, out_dir / "audit.png")
    report = atomic_write_text(out_dir / "audit.md", audit_markdown(audit))
    return [report, figure]
