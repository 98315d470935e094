"""Rendering of explanations: heatmap geometry, overlays, the Figure-1 picture and the headline page."""
import json
import os
import re

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from popjax.explain import render

S, K, N = 224, 7, 18


# ------------------------------------------------------------------------------------------- helpers
def one_hot(i, j, k=K):
    h = np.zeros((k, k))
    h[i, j] = 1.0
    return h


def stem_and_shortcuts(img):
    """ResNet50's spatial geometry without random weights: the 7x7/2 stem conv (pad 3, all-ones kernel),
    the 3x3/2 max-pool (pad 1) and the three strided 1x1 shortcuts (what a ResNet with zero residual
    branches computes). 224 -> 7; each cell sees the 11x11 patch centred on pixel (32 i, 32 j)."""
    x = sliding_window_view(np.pad(img, 3), (7, 7))[::2, ::2].sum((-2, -1))
    x = sliding_window_view(np.pad(x, 1, constant_values=-np.inf), (3, 3))[::2, ::2].max((-2, -1))
    return x[::8, ::8]


def explanation(heatmaps, *, alpha=None, words=None, **extra):
    n = len(heatmaps)
    alpha = np.full(n, 1.0 / max(n, 1)) if alpha is None else np.asarray(alpha, float)
    ex = {"score": 0.8125,
          "frames": [{"timestamp": round(6.0 * k / n, 4), "attention": float(a),
                      "heatmap": np.asarray(h, float).tolist()} for k, (a, h) in enumerate(zip(alpha, heatmaps))],
          "words": [{"word": "cute", "weight": 0.5}, {"word": "dog", "weight": 0.3}, {"word": "video", "weight": 0.2}]
          if words is None else words,
          "backbone": "random ResNet50 (seed 0); NOT ImageNet-pretrained",
          "headline": "Cute dog video", "video": "clip.mp4", "target": "popular"}
    ex.update(extra)
    return ex


def panel(fig, img, label, inset=3):
    """Crop of the rendered image under the axes with this label."""
    ax = next(a for a in fig.axes if a.get_label() == label)
    bb = ax.get_window_extent()
    height = img.shape[0]
    return img[int(height - bb.y1) + inset:int(height - bb.y0) - inset, int(bb.x0) + inset:int(bb.x1) - inset]


# ------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("i,j", [(0, 0), (1, 5), (3, 3), (6, 2), (6, 6)])
def test_hot_cell_upsamples_to_its_receptive_field_centre(i, j):
    up = render.upsample_heatmap(one_hot(i, j), S)
    assert up.shape == (S, S)
    y, x = np.unravel_index(np.argmax(up), up.shape)  # first maximum in row-major order
    assert (y, x) == (32 * i, 32 * j)
    assert up[32 * i, 32 * j] == pytest.approx(1.0)
    assert render.heatmap_argmax_xy(one_hot(i, j), S) == (32.0 * j, 32.0 * i)


def test_upsampling_interpolates_between_centres_and_clamps_at_borders():
    h = np.arange(K * K, dtype=float).reshape(K, K)
    up = render.upsample_heatmap(h, S)
    for i in range(K):
        for j in range(K):
            assert up[32 * i, 32 * j] == pytest.approx(h[i, j])  # cell centres are exact
    assert up[32 * 2 + 16, 32 * 3] == pytest.approx((h[2, 3] + h[3, 3]) / 2)  # half way between centres
    assert np.allclose(up[192:, 0], h[6, 0]) and np.allclose(up[0, 192:], h[0, 6])  # clamped past the last centre
    assert render.upsample_heatmap(h, (112, 224)).shape == (112, 224)


def test_alignment_through_the_network_geometry_and_why_a_plain_resize_is_wrong():
    for i, j in [(1, 1), (2, 5), (4, 3), (5, 0)]:
        img = np.zeros((S, S))
        img[max(32 * i - 2, 0):32 * i + 3, max(32 * j - 2, 0):32 * j + 3] = 1.0  # object centred on (32i, 32j)
        cam = stem_and_shortcuts(img)
        assert cam.shape == (K, K) and np.unravel_index(np.argmax(cam), cam.shape) == (i, j)
        heat = cam / cam.max()
        y, x = np.unravel_index(np.argmax(render.upsample_heatmap(heat, S)), (S, S))
        assert (x, y) == (32 * j, 32 * i)  # lands on the object
        assert render.heatmap_argmax_xy(heat, S) == (32.0 * j, 32.0 * i)
        # an image resize puts cell centres at 32 i + 16: half a cell off
        naive = np.asarray(Image.fromarray(heat.astype(np.float32)).resize((S, S), Image.BILINEAR))
        ny, nx = np.unravel_index(np.argmax(naive), naive.shape)
        assert abs(ny - 32 * i) >= 14 and (j == 0 or abs(nx - 32 * j) >= 14)  # (cell 0 is a plateau at 0..16)


def test_argmax_is_none_without_positive_evidence():
    assert render.heatmap_argmax_xy(np.zeros((K, K)), S) is None
    assert render.heatmap_argmax_xy(one_hot(2, 3) * 0.25, S) == (96.0, 64.0)


# ------------------------------------------------------------------------------------------- overlay
def test_overlay_shapes_and_heat_dependent_opacity():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    out = render.overlay(frame, one_hot(1, 5))
    assert out.shape == frame.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - frame).sum(-1)
    assert diff[32, 160] > 40 and diff[32 * 5, 32 * 1] == 0  # hot cell coloured, cold cell untouched
    assert np.array_equal(render.overlay(frame, np.zeros((K, K))), frame)
    faint = np.abs(render.overlay(frame, one_hot(1, 5) * 0.3).astype(int) - frame).sum(-1)
    assert 0 < faint[32, 160] < diff[32, 160]  # attention-scaled maps are fainter, not renormalised


# -------------------------------------------------------------------------------------------- figure
def test_figure_layout_and_hot_region():
    frames = np.full((N, S, S, 3), 128, np.uint8)
    alpha = np.linspace(1.0, 2.0, N) ** 2
    alpha[9] = 10.0
    alpha /= alpha.sum()
    heat = [np.zeros((K, K)) for _ in range(N)]
    heat[9] = one_hot(1, 5)
    ex = explanation(heat, alpha=alpha)
    for e in ex["frames"]:
        e["no_positive_evidence"] = False
    fig = render.build_figure(ex, frames)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    assert img.shape[1] >= 1200 and 900 <= img.shape[0] <= 1600
    assert render.figure(ex, frames).size == (img.shape[1], img.shape[0])
    labels = {a.get_label() for a in fig.axes}
    assert {f"frame:{k}" for k in range(7, 12)} <= labels and {"best_frame", "best_overlay", "attention"} <= labels
    best = panel(fig, img, "best_overlay").astype(int)
    d = np.abs(best - 128).sum(-1)
    h, w = d.shape
    hot, cold = d[int(h * 32 / S), int(w * 160 / S)], d[int(h * 160 / S), int(w * 32 / S)]
    assert hot > 60 and cold < 5
    y, x = np.unravel_index(np.argmax(d), d.shape)
    assert abs(y / h - 32 / S) < 0.03 and abs(x / w - 160 / S) < 0.03  # peak on the cell centre, not +16 px
    assert np.abs(panel(fig, img, "best_frame").astype(int) - 128).max() < 5  # left: the frame itself


def test_all_zero_heatmaps_empty_words_and_headline_only():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (N, S, S, 3), dtype=np.uint8)
    img = render.figure(explanation([np.zeros((K, K))] * N, words=[]), frames, dpi=50)
    assert img.mode == "RGB" and img.size[0] == 700
    assert render.figure(explanation([], words=None), None, dpi=50).size[0] == 700
    with pytest.raises(ValueError):
        render.figure(explanation([np.zeros((K, K))] * N), frames[:5])
    with pytest.raises(ValueError):
        render.figure(explanation([np.full((K, K), np.nan)] * N), frames)


def test_json_round_trip_renders_identically(tmp_path):
    frames = np.random.default_rng(2).integers(0, 256, (N, S, S, 3), dtype=np.uint8)
    heat = [np.random.default_rng(k).random((K, K)) * (k + 1) / N for k in range(N)]
    ex = explanation(heat, alpha=np.random.default_rng(3).dirichlet(np.ones(N)))
    back = json.loads(json.dumps(ex))
    first, second = render.figure(ex, frames, dpi=40), render.figure(back, frames, dpi=40)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert render.headline_html(ex) == render.headline_html(back)
    path = render.save_figure(back, frames, tmp_path / "out" / "figure.png", dpi=40)
    with Image.open(path) as png:
        assert png.format == "PNG" and np.array_equal(np.asarray(png.convert("RGB")), np.asarray(first))
    assert os.listdir(tmp_path / "out") == ["figure.png"]  # no temporary file left behind


def test_backbone_is_flagged_when_not_imagenet_pretrained():
    assert not render.imagenet_pretrained("random ResNet50 (seed 0); NOT ImageNet-pretrained")
    assert not render.imagenet_pretrained("ResNet50, random init")
    assert render.imagenet_pretrained("ResNet50, ImageNet weights (Keras applications)")
    assert "NOT ImageNet-pretrained" in render.backbone_line("ResNet50, random init (seed 3)")
    assert "NOT" not in render.backbone_line("ResNet50, ImageNet weights (torchvision)")


# ---------------------------------------------------------------------------------------------- html
def backgrounds(page):
    return [tuple(int(c[k:k + 2], 16) / 255 for k in (0, 2, 4)) for c in re.findall(r"background:#([0-9a-f]{6})", page)]


def test_headline_html_escapes_and_colours(tmp_path):
    words = [{"word": "<script>alert(1)</script>", "weight": 0.1}, {"word": "Tom & Jerry", "weight": 0.6},
             {"word": '"quoted"', "weight": 0.3}]
    ex = explanation([], words=words, headline="<script>x</script> & more")
    page = render.headline_html(ex)
    assert "<script" not in page.lower() and "&lt;script&gt;" in page and "Tom &amp; Jerry" in page
    assert "&quot;quoted&quot;" in page and "http" not in page and "<link" not in page and " src=" not in page
    assert 'title="weight = 0.6"' in page and "P(popular) = 0.812" in page and "NOT ImageNet-pretrained" in page
    lum = [render.luminance(c) for c in backgrounds(page)]
    assert len(lum) == 3 and lum[1] < lum[2] < lum[0]  # higher weight -> darker
    path = render.save_headline_html(ex, tmp_path / "headline.html")
    with open(path, encoding="utf-8") as f:
        assert f.read() == page


def test_word_colours_signed_and_degenerate():
    unsigned = render.word_colors([0.0, 0.2, 0.8, 0.5])
    lum = [render.luminance(c) for c in unsigned]
    assert lum[0] == pytest.approx(1.0) and lum[2] < lum[3] < lum[1] < lum[0]
    pos, neg = render.word_colors([0.4, -0.4])
    assert render.luminance(pos) == pytest.approx(render.luminance(render.word_colors([0.4])[0]))
    assert pos[0] > pos[2] and neg[2] > neg[0]  # red for positive, blue for negative gradient x input
    assert render.word_colors([0.0, 0.0]) == [(1.0, 1.0, 1.0)] * 2 and render.word_colors([]) == []
    assert "No word weights" in render.headline_html(explanation([], words=[]))
