"""A SYNTHETIC demo corpus with a planted, known cause of popularity.

The paper's 37k Facebook videos are not public, so the built-in demo plants causes we can check the
explanations against:

* a visual cue: a saturated red disk, static at a random position for a contiguous part of the clip
  (only some of the 18 sampled frames show it), among moving clutter and saturated distractor objects
  of other colours that appear in every kind of video;
* cue words: one of a few words inserted at a random position in the headline, among common words.

Each video has the visual cue, a cue word, both or neither (neither for half of each split). Followers span
four orders of magnitude; views = followers x exp(effect of the cues + noise), so normalised views
(the paper's target) depend on the cues alone and "popular" (above the training median) means "has a
cue". ``truth.jsonl`` records, per video, the cue's times and box (fractions of width and height) and
the cue words, for the faithfulness checks of the explanations.

Everything written is marked synthetic: a ``README.txt``, a ``synthetic`` column in the manifest and
``"synthetic": true`` in every truth line.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import numpy as np
from matplotlib.colors import hsv_to_rgb

from popjax import files

CUE_WORDS = ("puppy", "giveaway", "surprise")
FILLER_WORDS = tuple("""
the a this our new my your when how why what best first last day week year time people world city
home family friends kids school team game music song dance food recipe kitchen garden car road trip
travel beach mountain river park street house room morning night summer winter weather news story
video clip look watch see try make take find learn show tell talk walk run play build fix clean cook
open close start finish great good big small little old young quick easy simple real full free live
local public open official update review guide tips ideas plan test part series episode highlights
behind scenes moment minute hour today tomorrow weekend holiday birthday wedding party market shop
price money work office project idea question answer problem change future history science nature
""".split())

WIDTH, HEIGHT, FPS = 320, 240, 10
CUE_RGB = (255, 0, 0)
DISTRACTOR_HUES = (0.33, 0.58, 0.15, 0.8)  # green, blue, yellow, purple: saturated but never red


@dataclasses.dataclass(frozen=True)
class DemoVideo:
    """Everything that defines one synthetic video (rendering is a pure function of this)."""

    id: str
    seed: int
    duration: float
    visual_cue: bool
    word_cue: bool
    cue_t0: float
    cue_t1: float
    cue_box: tuple  # (x0, y0, x1, y1) as fractions of width and height
    headline: str
    cue_words: tuple
    followers: int
    views: int


# ------------------------------------------------------------------------------------------ sampling
NEITHER, VISUAL, WORD, BOTH = range(4)


def cue_kinds(ids: list[str], rng: np.random.Generator) -> dict[str, int]:
    """Which cue each video carries, stratified by split: in every split half the videos (rounded up)
    carry no cue and the rest visual, word or both in equal shares. With the two groups' normalised
    views far apart, the training median then falls between them and "popular" means "has a cue"."""
    from popjax.data.manifest import assign_split

    kinds = {}
    for split in ("train", "val", "test"):
        members = [i for i in ids if assign_split(i) == split]
        cued = len(members) // 2
        pool = [NEITHER] * (len(members) - cued) + [(VISUAL, WORD, BOTH)[k % 3] for k in range(cued)]
        kinds.update(zip(members, rng.permutation(pool).tolist()))
    return kinds


def plan_corpus(num_videos: int, seed: int = 0, cue_diameter: int = 64) -> list[DemoVideo]:
    """Draw the corpus: which videos carry which cue, the cue's time and place, headlines, counts."""
    rng = np.random.default_rng(seed)
    ids = [f"demo{i:04d}" for i in range(num_videos)]
    kinds = cue_kinds(ids, rng)
    videos = []
    for id_ in ids:
        visual, word = kinds[id_] in (VISUAL, BOTH), kinds[id_] in (WORD, BOTH)
        duration = float(rng.choice([4.0, 5.0, 6.0, 7.0, 8.0]))
        span = min(duration, 6.0)  # the model samples the first 6 s
        length = span * rng.uniform(0.25, 0.4)
        t0 = float(rng.uniform(0.0, span - length))
        r = cue_diameter / 2
        cx, cy = rng.uniform(r + 4, WIDTH - r - 4), rng.uniform(r + 4, HEIGHT - r - 4)
        box = (float((cx - r) / WIDTH), float((cy - r) / HEIGHT), float((cx + r) / WIDTH), float((cy + r) / HEIGHT))
        words = list(rng.choice(FILLER_WORDS, size=int(rng.integers(4, 10))))
        cue_words = ()
        if word:
            cue = str(rng.choice(CUE_WORDS))
            words.insert(int(rng.integers(0, len(words) + 1)), cue)
            cue_words = (cue,)
        followers = int(10 ** rng.uniform(3, 7))
        effect = 2.0 * visual + 2.0 * word + rng.normal(0.0, 0.3)
        views = int(round(followers * 0.05 * np.exp(effect)))
        videos.append(DemoVideo(
            id=id_, seed=int(rng.integers(2**31)), duration=duration, visual_cue=bool(visual),
            word_cue=bool(word), cue_t0=t0 if visual else 0.0, cue_t1=t0 + length if visual else 0.0,
            cue_box=box if visual else (), headline=" ".join(words).capitalize(), cue_words=cue_words,
            followers=followers, views=views))
    return videos


# --------------------------------------------------------------------------------------- rendering
def _hsv_to_rgb(h, s, v) -> np.ndarray:
    """uint8 RGB of one HSV colour (components in [0, 1])."""
    return (hsv_to_rgb([h, s, v]) * 255).astype(np.uint8)


@dataclasses.dataclass
class _Scene:
    background: np.ndarray   # [H, W, 3] uint8
    shapes: list             # (kind, colour, size, start xy, velocity xy)


def _scene(video: DemoVideo) -> _Scene:
    rng = np.random.default_rng(video.seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH] / max(WIDTH, HEIGHT)
    c0, c1 = (_hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.4), rng.uniform(0.3, 0.9)) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    g = (np.cos(angle) * xx + np.sin(angle) * yy)
    g = (g - g.min()) / (np.ptp(g) + 1e-9)
    bg = (c0 * (1 - g[..., None]) + c1 * g[..., None])
    bg += rng.normal(0, 6, bg.shape)  # sensor-like noise
    for _ in range(int(rng.integers(6, 12))):  # static low-saturation clutter
        colour = _hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.5), rng.uniform(0.2, 0.95))
        x0, y0 = rng.integers(0, WIDTH - 20), rng.integers(0, HEIGHT - 20)
        w, h = rng.integers(20, 90), rng.integers(20, 90)
        bg[y0:y0 + h, x0:x0 + w] = colour
    shapes = []
    for _ in range(int(rng.integers(2, 5))):  # moving objects, some saturated (never red)
        if rng.uniform() < 0.5:
            colour = _hsv_to_rgb(rng.choice(DISTRACTOR_HUES), 1.0, rng.uniform(0.7, 1.0))
        else:
            colour = _hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.5), rng.uniform(0.2, 0.95))
        shapes.append((str(rng.choice(["disk", "square"])), colour, int(rng.integers(40, 70)),
                       rng.uniform([0, 0], [WIDTH, HEIGHT]), rng.normal(0, 25, 2)))
    return _Scene(np.clip(bg, 0, 255).astype(np.uint8), shapes)


def _draw(frame, kind, colour, size, cx, cy):
    """A disk or square of diameter ``size`` centred at (cx, cy), tested only on the pixels of its bounding box."""
    r = size / 2
    y0, x0 = max(0, int(np.floor(cy - r))), max(0, int(np.floor(cx - r)))
    y1, x1 = min(frame.shape[0], int(np.ceil(cy + r)) + 1), min(frame.shape[1], int(np.ceil(cx + r)) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    if kind == "disk":
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    else:
        inside = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    frame[y0:y1, x0:x1][inside] = colour


def render_frame(video: DemoVideo, t: float, scene: _Scene | None = None) -> np.ndarray:
    """The frame shown at time ``t`` seconds: uint8 [HEIGHT, WIDTH, 3]."""
    scene = scene or _scene(video)
    frame = scene.background.copy()
    for kind, colour, size, xy, v in scene.shapes:
        x, y = (xy + v * t) % [WIDTH, HEIGHT]
        _draw(frame, kind, colour, size, x, y)
    if video.visual_cue and video.cue_t0 <= t < video.cue_t1:
        x0, y0, x1, y1 = video.cue_box
        _draw(frame, "disk", CUE_RGB, (x1 - x0) * WIDTH, (x0 + x1) / 2 * WIDTH, (y0 + y1) / 2 * HEIGHT)
    return frame


def render_video(video: DemoVideo) -> np.ndarray:
    """All frames of the clip at ``FPS``: uint8 [T, HEIGHT, WIDTH, 3]."""
    scene = _scene(video)
    times = np.arange(int(round(video.duration * FPS))) / FPS
    return np.stack([render_frame(video, t, scene) for t in times])


# ----------------------------------------------------------------------------------------- writing
def encode_mp4(frames: np.ndarray, path: Path, fps: int = FPS) -> None:
    """H.264 (yuv420p) with the ffmpeg bundled by imageio-ffmpeg; written to a temp name, then renamed."""
    from popjax.data.video import ffmpeg_exe

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    h, w = frames.shape[1:3]
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:", "-c:v", "libx264", "-preset", "ultrafast",
           "-threads", "1", "-crf", "18", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(tmp)]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace')[-500:]}")
    os.replace(tmp, path)


def truth_record(video: DemoVideo) -> dict:
    cues = [{"t0": video.cue_t0, "t1": video.cue_t1, "box": list(video.cue_box)}] if video.visual_cue else []
    return {"id": video.id, "cues": cues, "cue_words": list(video.cue_words), "synthetic": True}


def write_corpus(out_dir, num_videos: int = 320, seed: int = 0, workers: int | None = None) -> Path:
    """Write ``manifest.csv``, ``videos/*.mp4``, ``truth.jsonl`` and ``README.txt`` under ``out_dir``.

    Idempotent: videos already written are kept, so an interrupted run simply continues.
    Returns the manifest path.
    """
    from concurrent.futures import ThreadPoolExecutor

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    videos = plan_corpus(num_videos, seed)

    def make(video):
        path = out / "videos" / f"{video.id}.mp4"
        if not path.exists():
            encode_mp4(render_video(video), path)

    # ffmpeg runs outside the GIL; rendering is numpy, so threads keep both cores busy.
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        list(pool.map(make, videos))
    files.write_jsonl(out / "truth.jsonl", [truth_record(v) for v in videos])
    rows = [["id", "video", "headline", "views", "followers", "synthetic"]]
    rows += [[v.id, f"videos/{v.id}.mp4", v.headline, v.views, v.followers, 1] for v in videos]
    files.write_csv(out / "manifest.csv", rows)
    files.write_text(out / "README.txt", (
        "SYNTHETIC demo corpus written by `popjax demo` (seed {seed}, {n} videos).\n"
        "Not real social-media data: popularity is planted. A video is popular when it shows a red disk\n"
        "(times and boxes in truth.jsonl) and/or its headline holds one of the cue words {words}.\n"
    ).format(seed=seed, n=num_videos, words=", ".join(CUE_WORDS)))
    return out / "manifest.csv"
