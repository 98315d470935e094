"""Rendering of explanations (paper Fig. 1 and Sec. 2, "Visualizations"): pure numpy + Pillow + matplotlib.

Input is a dict in the ``explanation.json`` shape::

    {"score": P(popular), "frames": [{"timestamp", "attention", "heatmap": K x K in [0, 1] *after*
     attention scaling, "no_positive_evidence"?}], "words": [{"word", "weight"}], "backbone": str,
     "headline": str, "video"?: str, "target"?: "popular" | "unpopular"}

plus the uint8 RGB frames [N, S, S, 3] the model saw. Nothing here computes an explanation.

Geometry. ResNet50's last-conv cell (i, j) of a K x K map is centred on input pixel (32 i, 32 j) for
224-pixel inputs (stride 32; receptive-field centre at 32 i, not 32 i + 16). A plain image resize puts
cell centres at 32 i + 16 and shifts the map by half a cell (the pointing game then misses boxes it
should hit), so :func:`upsample_heatmap` maps output pixel y to cell coordinate y / stride with
stride = size / K and interpolates bilinearly, clamping at the borders.

Colours. Heatmaps are drawn on one fixed [0, 1] scale, never re-normalised per frame: "we use those
weights to scale the magnitudes of Grad-CAM heatmaps", so a low-attention frame *should* look faint.
Words: "for the headline text darker color corresponds to higher importance". Non-negative weights
(attention beta_t) shade one hue from white (0) to dark red (max weight). Signed weights (gradient x
input of the baseline headline model) shade red for positive (raises the target-class score) and blue for
negative (lowers it); in both cases darkness is |weight| / max |weight|.
"""
from __future__ import annotations

import html
import io
import os
import re
import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle
from PIL import Image

from popjax import files

CMAP = "jet"
MAX_ALPHA = 0.6  # overlay opacity at heat 1; opacity is proportional to heat so cold regions stay clear
WINDOW = 5  # the paper's top row: 5 consecutive frames
_POSITIVE_DARK = np.array([0.62, 0.06, 0.04])  # word shade at max weight (positive / unsigned)
_NEGATIVE_DARK = np.array([0.05, 0.22, 0.62])  # word shade at max |weight| for negative signed weights
_WARN = "#b00020"


# --------------------------------------------------------------------------------------------- geometry
def _axis_weights(n_cells: int, size: int):
    """Indices and weights that interpolate n_cells cell centres (at c * size / n_cells) onto size pixels."""
    c = np.clip(np.arange(size) * (n_cells / size), 0.0, n_cells - 1)
    lo = np.floor(c).astype(int)
    hi = np.minimum(lo + 1, n_cells - 1)
    return lo, hi, c - lo


def upsample_heatmap(h, size) -> np.ndarray:
    """K x K map -> [size, size] float64, cell (i, j) centred on pixel (i, j) * size / K (32 i, 32 j at 224).

    Pixel y reads cell coordinate y / stride (stride = size / K) with bilinear interpolation and clamping
    at the borders, which is the network geometry (not an image resize, which is off by half a cell).
    ``size`` may also be (height, width).
    """
    h = np.asarray(h, np.float64)
    if h.ndim != 2 or 0 in h.shape:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {h.shape}")
    height, width = (size, size) if np.isscalar(size) else size
    r0, r1, wr = _axis_weights(h.shape[0], int(height))
    c0, c1, wc = _axis_weights(h.shape[1], int(width))
    rows = h[r0] * (1 - wr)[:, None] + h[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc) + rows[:, c1] * wc


def heatmap_argmax_xy(h, size: int):
    """(x, y) pixel centre of the hottest cell, ((j, i) * size / K: (32 j, 32 i) at 224), or None when the
    map has no positive value (no positive evidence: a pointing-game miss, not pixel (0, 0)).
    Ties go to the first cell in row-major order."""
    h = np.asarray(h, np.float64)
    if h.ndim != 2 or h.size == 0 or not np.all(np.isfinite(h)) or h.max() <= 0:
        return None
    i, j = np.unravel_index(int(np.argmax(h)), h.shape)
    return (float(j * size / h.shape[1]), float(i * size / h.shape[0]))


# ---------------------------------------------------------------------------------------------- overlay
def overlay(frame, heatmap, *, cmap: str = CMAP, max_alpha: float = MAX_ALPHA) -> np.ndarray:
    """Blend a colormapped heatmap onto a uint8 RGB frame with opacity max_alpha * heat; heat is taken on the
    absolute [0, 1] scale (already scaled by alpha_i / max alpha), so zero heat leaves the frame untouched."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"frame must be [H, W, 3] RGB, got shape {frame.shape}")
    heat = np.clip(upsample_heatmap(_finite(heatmap, "heatmap"), frame.shape[:2]), 0.0, 1.0)
    colour = colormaps[cmap](heat)[..., :3]
    a = max_alpha * heat[..., None]
    out = (1 - a) * (frame.astype(np.float64) / 255.0) + a * colour
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _finite(x, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contains NaN or inf")
    return x


# ------------------------------------------------------------------------------------------ word colour
def word_colors(weights) -> list[tuple[float, float, float]]:
    """RGB in [0, 1] per word: white -> dark as |w| / max |w| goes 0 -> 1 (darker = more important).
    Red for w >= 0, blue for w < 0 (only signed scores, e.g. gradient x input, have those)."""
    w = _finite(weights, "word weights").reshape(-1)
    peak = float(np.max(np.abs(w))) if w.size else 0.0
    s = np.abs(w) / peak if peak > 0 else np.zeros_like(w)
    dark = np.where((w < 0)[:, None], _NEGATIVE_DARK, _POSITIVE_DARK)
    return [tuple(float(v) for v in 1.0 - si * (1.0 - d)) for si, d in zip(s, dark)]


def luminance(rgb) -> float:
    """Relative luminance (sRGB/Rec. 709 weights) of an RGB triple in [0, 1]."""
    r, g, b = rgb
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(255 * v)):02x}" for v in rgb)


def _ink(rgb) -> str:
    return "#ffffff" if luminance(rgb) < 0.45 else "#000000"


def _fmt_weight(w: float) -> str:
    return f"{w:.2f}" if w == 0 or abs(w) >= 0.01 else f"{w:.1e}"


def _signed(words) -> bool:
    return any(float(w["weight"]) < 0 for w in words)


def _legend(words, target: str) -> str:
    if _signed(words):
        return (f"red raises the {target} score, blue lowers it; darker = larger |weight| "
                "(gradient x input)")
    return "darker = higher importance (shade = weight / max weight)"


# -------------------------------------------------------------------------------------------- metadata
def imagenet_pretrained(backbone: str) -> bool:
    """Whether the backbone description claims ImageNet pretraining (and does not negate it)."""
    s = backbone.lower()
    return "imagenet" in s and not re.search(r"\bnot\b|\brandom\b|untrained|without", s)


def backbone_line(backbone: str) -> str:
    """The backbone description, with an explicit 'NOT ImageNet-pretrained' when it is not."""
    line = f"Backbone: {backbone}"
    if not imagenet_pretrained(backbone) and "not imagenet" not in backbone.lower():
        line += " -- NOT ImageNet-pretrained"
    return line


def _target(explanation) -> str:
    return explanation.get("target") or "popular"


def _score_line(explanation) -> str:
    p = float(explanation["score"])
    return f"P(popular) = {p:.3f}  ->  predicted {'popular' if p > 0.5 else 'unpopular'}"


def _no_evidence(entry, heat: np.ndarray) -> bool:
    flag = entry.get("no_positive_evidence")
    return bool(flag) if flag is not None else not heat.max() > 0


def _fmt_alpha(a: float) -> str:
    return f"{a:.2f}" if a >= 0.1 else f"{a:.3f}"


def _checked(explanation, frames):
    """(entries, heatmaps, frames uint8 [N, S, S, 3]) after validating the explanation against the frames."""
    entries = list(explanation.get("frames") or [])
    if frames is None:
        frames = np.zeros((0, 1, 1, 3), np.uint8)
    frames = np.asarray(frames)
    if len(entries) != len(frames):
        raise ValueError(f"explanation has {len(entries)} frames but {len(frames)} images were given")
    if len(frames) and (frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8):
        raise ValueError(f"frames must be uint8 [N, S, S, 3], got {frames.dtype} {frames.shape}")
    heats = [np.clip(_finite(e["heatmap"], f"frame {k} heatmap"), 0.0, 1.0) for k, e in enumerate(entries)]
    return entries, heats, frames


def window(alpha, size: int = WINDOW) -> range:
    """The `size` consecutive frame indices centred (as far as the ends allow) on argmax alpha."""
    n = len(alpha)
    if n <= size:
        return range(n)
    start = min(max(int(np.argmax(alpha)) - size // 2, 0), n - size)
    return range(start, start + size)


# --------------------------------------------------------------------------------------------- figure
_W, _M, _GAP, _DPI = 14.0, 0.45, 0.22, 100  # figure width, margin, gap between frames (inches), dpi
_WORD_PT, _LINE_H, _MAX_LINES = 17, 0.62, 4


def _axes(fig, height, x, top, w, h):
    """Axes at (x, top) inches from the top-left corner of a fig of the given height."""
    return fig.add_axes((x / _W, 1 - (top + h) / height, w / _W, h / height))


def _wrap(words, width_in: float):
    """Lay words out in lines: [(word_index, x_inches, width_inches)] per line, at _WORD_PT points."""
    canvas = FigureCanvasAgg(Figure(dpi=_DPI))
    renderer, prop = canvas.get_renderer(), FontProperties(size=_WORD_PT)
    space, pad = 0.14, 0.10
    lines, line, x = [], [], 0.0
    for k, w in enumerate(words):
        text_w = renderer.get_text_width_height_descent(str(w["word"]) or " ", prop, ismath=False)[0] / _DPI
        box = text_w + 2 * pad
        if line and x + box > width_in:
            lines.append(line)
            line, x = [], 0.0
        line.append((k, x, box))
        x += box + space
    if line:
        lines.append(line)
    return lines


def _show(ax, img, *, border=None):
    ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(border is not None)
        if border is not None:
            spine.set_edgecolor(border)
            spine.set_linewidth(4)


def _heat_panel(ax, frame, heat, no_evidence, *, border=None, fontsize=10):
    """Overlay, or the plain (dimmed) frame with a note when the map has no positive evidence."""
    if no_evidence:
        _show(ax, (frame.astype(np.float64) * 0.55).astype(np.uint8), border=border)
        ax.text(0.5, 0.5, "no positive\nevidence\n(Grad-CAM map = 0)", transform=ax.transAxes, ha="center",
                va="center", fontsize=fontsize, color="white", fontweight="bold",
                bbox=dict(boxstyle="round,pad=0.4", fc=_WARN, ec="none", alpha=0.9))
    else:
        _show(ax, overlay(frame, heat), border=border)


def _draw_title(fig, height, explanation):
    backbone = str(explanation.get("backbone", "unknown"))
    warn = not imagenet_pretrained(backbone)
    video = explanation.get("video")
    what = "Grad-CAM and attention" if explanation.get("frames") else "Word importance"
    sub = f"{what} for the {_target(explanation)} class"
    if video:
        sub = f"{os.path.basename(str(video))}  |  " + sub
    fig.text(_M / _W, 1 - 0.3 / height, _score_line(explanation), fontsize=21, fontweight="bold", va="top")
    fig.text(_M / _W, 1 - 0.78 / height, sub, fontsize=12, color="#333333", va="top")
    lines = textwrap.wrap(("WARNING  " if warn else "") + backbone_line(backbone), 135)[:2]
    fig.text(_M / _W, 1 - 1.08 / height, "\n".join(lines), fontsize=12, va="top",
             color=_WARN if warn else "#333333", fontweight="bold" if warn else "normal")


def _draw_top_row(fig, height, top, entries, heats, frames, best, idx):
    n = len(entries)
    side = (_W - 2 * _M - (WINDOW - 1) * _GAP) / WINDOW
    fig.text(_M / _W, 1 - top / height, f"{len(idx)} consecutive frames around the highest-attention frame "
             f"(frames {idx[0] + 1}-{idx[-1] + 1} of {n}); heatmaps scaled by \u03b1\u1d62 / max \u03b1",
             fontsize=12, fontweight="bold", va="top")
    x0 = _M + (WINDOW - len(idx)) * (side + _GAP) / 2
    peak = max(float(e["attention"]) for e in entries)
    for slot, k in enumerate(idx):
        ax = _axes(fig, height, x0 + slot * (side + _GAP), top + 1.05, side, side)
        ax.set_label(f"frame:{k}")
        a = float(entries[k]["attention"])
        _heat_panel(ax, frames[k], heats[k], _no_evidence(entries[k], heats[k]),
                    border="#ffb000" if k == best else None)
        ax.text(0.5, 1.0 + 0.45 / side, f"\u03b1 = {_fmt_alpha(a)}", transform=ax.transAxes,
                ha="center", va="bottom", fontsize=15, fontweight="bold")
        scale = a / peak if peak > 0 else 0.0
        ax.text(0.5, 1.0 + 0.1 / side, f"t = {float(entries[k]['timestamp']):.2f} s   "
                f"\u03b1/max = {scale:.2f}", transform=ax.transAxes, ha="center", va="bottom", fontsize=10,
                color="#333333")
    return top + 1.05 + side


def _draw_bottom_row(fig, height, top, entries, heats, frames, best, idx, target):
    e, side = entries[best], 3.55
    fig.text(_M / _W, 1 - top / height, "Highest-attention frame and its popularity importance",
             fontsize=12, fontweight="bold", va="top")
    t = float(e["timestamp"])
    ax = _axes(fig, height, _M, top + 0.6, side, side)
    ax.set_label("best_frame")
    _show(ax, frames[best])
    ax.set_title(f"frame {best + 1}, t = {t:.2f} s, \u03b1 = {_fmt_alpha(float(e['attention']))}", fontsize=11)
    ax = _axes(fig, height, _M + side + 0.25, top + 0.6, side, side)
    ax.set_label("best_overlay")
    _heat_panel(ax, frames[best], heats[best], _no_evidence(e, heats[best]), fontsize=13)
    ax.set_title(f"Grad-CAM ({target}) x \u03b1/max \u03b1 = importance", fontsize=11)
    cax = _axes(fig, height, _M + 2 * side + 0.4, top + 0.6, 0.18, side)
    cax.set_label("colorbar")
    cax.imshow(np.linspace(1, 0, 256)[:, None], aspect="auto", cmap=CMAP, extent=(0, 1, 0, 1))
    cax.set_xticks([])
    cax.yaxis.tick_right()
    cax.set_yticks([0, 0.5, 1])
    cax.tick_params(labelsize=9)
    cax.set_ylabel("importance", fontsize=10)
    cax.yaxis.set_label_position("right")
    _draw_attention(fig, height, top, entries, best, idx, x=_M + 2 * side + 1.95)
    return top + 0.6 + side


def _draw_attention(fig, height, top, entries, best, idx, x):
    alpha = np.array([float(e["attention"]) for e in entries])
    n = len(alpha)
    ax = _axes(fig, height, x, top + 0.6, _W - _M - x, 3.0)
    ax.set_label("attention")
    colours = ["#ffb000" if k == best else ("#4a78b5" if k in idx else "#b8c4d6") for k in range(n)]
    ax.bar(np.arange(n), alpha, color=colours, width=0.8)
    ax.axhline(1.0 / n, color="#555555", lw=1, ls="--")
    ax.text(n - 0.5, 1.0 / n, " uniform 1/N", fontsize=9, color="#555555", va="bottom", ha="right")
    if len(idx):
        ax.axvspan(idx[0] - 0.5, idx[-1] + 0.5, color="#4a78b5", alpha=0.08, lw=0)
    ticks = np.unique(np.linspace(0, n - 1, min(n, 7)).round().astype(int))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{float(entries[k]['timestamp']):.1f}" for k in ticks], fontsize=9)
    ax.tick_params(axis="y", labelsize=9)
    ax.set_xlabel("frame time (s)", fontsize=10)
    ax.set_ylim(0, max(alpha.max() * 1.15, 1.3 / n))
    ax.set_title(f"frame attention \u03b1\u1d62, all {n} frames (shaded: top row)", fontsize=11)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_headline(fig, height, top, explanation, lines):
    words = list(explanation.get("words") or [])
    target = _target(explanation)
    if not words:
        fig.text(_M / _W, 1 - top / height, "Headline", fontsize=12, fontweight="bold", va="top")
        text = explanation.get("headline") or ""
        fig.text(_M / _W, 1 - (top + 0.4) / height, "\n".join(textwrap.wrap(f"\u201c{text}\u201d", 110)[:2])
                 + "\n(no word weights: video-only model)", fontsize=13, va="top", color="#333333")
        return
    fig.text(_M / _W, 1 - top / height, f"Headline words: {_legend(words, target)}", fontsize=12,
             fontweight="bold", va="top")
    colours = word_colors([float(w["weight"]) for w in words])
    for row, line in enumerate(lines[:_MAX_LINES]):
        y = top + 0.45 + row * _LINE_H
        for k, x, box in line:
            c = colours[k]
            fig.patches.append(Rectangle(((_M + x) / _W, 1 - (y + 0.34) / height), box / _W, 0.34 / height,
                                         transform=fig.transFigure, fc=c, ec="#999999", lw=0.5))
            fig.text((_M + x + box / 2) / _W, 1 - (y + 0.17) / height, str(words[k]["word"]), ha="center",
                     va="center", fontsize=_WORD_PT, color=_ink(c))
            fig.text((_M + x + box / 2) / _W, 1 - (y + 0.37) / height, _fmt_weight(float(words[k]["weight"])),
                     ha="center", va="top", fontsize=8, color="#555555")
    hidden = sum(len(line) for line in lines[_MAX_LINES:])
    if hidden:
        fig.text(_M / _W, 1 - (top + 0.45 + _MAX_LINES * _LINE_H) / height, f"... (+{hidden} more words)",
                 fontsize=10, va="top", color="#555555")


def build_figure(explanation, frames, *, dpi: int = _DPI) -> Figure:
    """The matplotlib Figure (Agg canvas, pyplot untouched) behind :func:`figure`; e.g. for PDF/SVG.
    Axes are labelled ("frame:K", "best_frame", "best_overlay", "colorbar", "attention") for callers/tests.
    """
    entries, heats, frames = _checked(explanation, frames)
    words = list(explanation.get("words") or [])
    lines = _wrap(words, _W - 2 * _M)
    n_lines = min(len(lines), _MAX_LINES) + (len(lines) > _MAX_LINES)
    side = (_W - 2 * _M - (WINDOW - 1) * _GAP) / WINDOW
    head = 1.75
    body = (1.05 + side + 0.35 + 0.6 + 3.55 + 0.45) if entries else 0.0
    tail = 0.45 + (n_lines * _LINE_H if words else 1.0) + 0.45
    height = head + body + tail
    fig = Figure(figsize=(_W, height), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    _draw_title(fig, height, explanation)
    top = head
    if entries:
        alpha = [float(e["attention"]) for e in entries]
        best, idx = int(np.argmax(alpha)), list(window(alpha))
        top = _draw_top_row(fig, height, top, entries, heats, frames, best, idx) + 0.35
        top = _draw_bottom_row(fig, height, top, entries, heats, frames, best, idx,
                               _target(explanation)) + 0.45
    else:
        fig.text(_M / _W, 1 - (head - 0.4) / height, "(no video frames: headline-only model)", fontsize=12,
                 color="#555555", va="top")
    _draw_headline(fig, height, top, explanation, lines)
    if entries:
        fig.text(_M / _W, 0.2 / height, "Heatmaps: Grad-CAM of the class score at ResNet50's last conv layer, "
                 "ReLU, normalised to [0, 1], scaled by \u03b1\u1d62 / max \u03b1; one colour scale for all frames.",
                 fontsize=9, color="#555555", va="bottom")
    return fig


def figure(explanation, frames, *, dpi: int = _DPI) -> Image.Image:
    """A Figure-1 style picture (paper Fig. 1) as an RGB PIL image.

    Top: the 5 consecutive frames around the highest-attention frame with their attention weights above
    ("we use those weights to scale the magnitudes of Grad-CAM heatmaps"); bottom: the highest-attention
    frame (left) and its importance map (right), plus the attention over all N frames; then the headline,
    where "darker color corresponds to higher importance". The title gives P(popular) and the backbone's
    initialisation (flagged when it is NOT ImageNet-pretrained). Frames without positive evidence show a
    note, never a fake heatmap. Deterministic: the same input gives the same pixels.
    """
    fig = build_figure(explanation, frames, dpi=dpi)
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def save_figure(explanation, frames, path, *, dpi: int = _DPI) -> str:
    """Render :func:`figure` and write it as PNG to path atomically (temp file + os.replace)."""
    buf = io.BytesIO()
    figure(explanation, frames, dpi=dpi).save(buf, format="PNG")
    return str(files.write_bytes(path, buf.getvalue()))


# ----------------------------------------------------------------------------------------------- html
_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:60em;
margin:2em auto;padding:0 1em;color:#222}h1{font-size:1.4em}.score{font-size:1.3em;font-weight:bold}
.words{font-size:1.5em;line-height:2.4}.w{padding:.15em .4em;margin:0 .08em;border-radius:.25em;
border:1px solid #bbb;white-space:nowrap}.meta{color:#555}.warn{color:#b00020;font-weight:bold}"""


def headline_html(explanation) -> str:
    """A standalone HTML page (no scripts, no external resources) of the headline with each word's
    background shaded by its weight ("darker color corresponds to higher importance"), the weight in a
    title tooltip, the score and the backbone. All text is HTML-escaped."""
    words = list(explanation.get("words") or [])
    esc = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    backbone = str(explanation.get("backbone", "unknown"))
    spans = []
    for w, c in zip(words, word_colors([float(w["weight"]) for w in words])):
        tip = f"weight = {float(w['weight']):.6g}"
        spans.append(f'<span class="w" style="background:{_hex(c)};color:{_ink(c)}" title="{esc(tip)}">'
                     f"{esc(w['word'])}</span>")
    body = (f'<p class="words">{" ".join(spans)}</p>\n<p class="meta">{esc(_legend(words, _target(explanation)))}'
            "; hover a word for its weight.</p>" if words
            else '<p class="meta">No word weights (video-only model).</p>')
    bb_class = "meta" if imagenet_pretrained(backbone) else "warn"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>popjax: headline importance</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>Headline importance</h1>\n"
        f'<p class="score">{esc(_score_line(explanation))}</p>\n'
        f'<p class="meta">Headline: \u201c{esc(explanation.get("headline", ""))}\u201d</p>\n{body}\n'
        f'<p class="{bb_class}">{esc(backbone_line(backbone))}</p>\n</body>\n</html>\n'
    )


def save_headline_html(explanation, path) -> str:
    """Write :func:`headline_html` to path (UTF-8) atomically."""
    return str(files.write_text(path, headline_html(explanation)))
