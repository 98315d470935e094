"""The frames the model sees: N = 18 frames evenly spread over the first 6 s of a video.

Paper, sec. 2 ("Video frames"): "We extract N = 18 evenly distributed frames from the first
6 seconds of a video" (the first seconds, because that is how Facebook counts views); each frame
goes through ImageNet ResNet50, so it is resized to the backbone's input: the whole frame squashed
to ``size`` x ``size`` (no crop), uint8 RGB.

The rule, exactly. Let D be the video stream's real duration measured from its first frame (last
frame's presentation time + its duration - first frame's presentation time) and T = min(seconds, D).
Targets are t_i = (i + 1/2) T / N, i = 0..N-1, relative to the first frame. Target t_i takes the
first decoded frame whose presentation time p (relative to the first frame) has t_i <= p <= T; if
there is none (the end of a very short clip) it takes the last such frame. Several targets may take
the same frame (low frame rate); the frame is then repeated. Timestamps are those frames' real
presentation times, not the targets (frame-index seeking is wrong on variable-frame-rate video).

How. One ffmpeg process per video (the binary bundled with imageio-ffmpeg): the input option ``-t``
stops demuxing and decoding just after the window; a first ``showinfo`` logs every decoded frame's
pts and time base; a ``select`` expression keeps the first frame at or after each target; ``scale``
squashes it to size x size in rgb24; the frames come back as rawvideo on a pipe, and a second
``showinfo`` logs which frames were kept. ffmpeg's input header on the same stderr gives the
metadata. Python then recomputes the rule in exact rational arithmetic from the logged pts and
checks ffmpeg's choice. Only when ffmpeg could not have known T (the video is shorter than
``seconds``, so D is known only once it ended) or a rounding tie went the other way does a second
call pick the right frames by their index.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import re
import statistics
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from popjax import files

NUM_FRAMES = 18  # paper: N = 18
SECONDS = 6.0  # paper: the first 6 seconds
SIZE = 224  # ResNet50 input

# Decoded beyond `seconds`, to see the frame at/after the last target and whether the stream goes on.
_WINDOW_MARGIN = 0.25
# Ties (a target exactly on a frame's pts) must select that frame; doubles may round either way.
_TIE_EPS = 1e-9
_SCALE_FLAGS = "bicubic+accurate_rnd+full_chroma_int"
_STDERR_TAIL = 1200

# Demuxers that read still images or text, not video.
_NOT_VIDEO_FORMATS = re.compile(r"(_pipe\b|\bimage2\b|\btty\b)")

# Lines in which ffmpeg's decoder (not the muxer or the filter graph) reports damage.
_DECODER_ERRORS = re.compile(r"Decode error rate|rror while decoding|Error submitting packet|\[dec:")

REASONS = ("missing_file", "not_a_video", "decode_error", "no_frames", "timeout")


class VideoError(Exception):
    """A video that cannot be sampled; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class SampledFrames:
    frames: np.ndarray  # uint8 [N, size, size, 3], RGB
    timestamps: np.ndarray  # float64 [N], seconds from the stream's first frame: real pts of each frame
    info: dict  # duration, fps, width, height (as displayed), rotation, codec, sampled_seconds, ...


# ---------------------------------------------------------------------------------------------
# The rule (pure, exact).


def target_times(num_frames: int, span) -> list[Fraction]:
    """t_i = (i + 1/2) * span / N: N targets evenly spread over [0, span]."""
    span = Fraction(span)
    return [(2 * i + 1) * span / (2 * num_frames) for i in range(num_frames)]


def _targets_reached(rel: Fraction, num_frames: int, span: Fraction) -> int:
    """How many targets are <= rel: #{i : (2i+1) span / 2N <= rel}."""
    if span == 0:
        return num_frames if rel >= 0 else 0
    return min(num_frames, max(0, math.floor((2 * num_frames * rel / span + 1) / 2)))


def choose_frames(rel_times, num_frames: int, span) -> list[int]:
    """For each target, the index (into ``rel_times``, decode order) of the frame it takes.

    ``rel_times``: exact presentation times relative to the first frame (None: no timestamp).
    Target t_i takes the first frame with t_i <= p <= span, else the last frame with 0 <= p <= span.
    Returns [] when no frame lies in [0, span].
    """
    span = Fraction(span)
    chosen: list[int] = []
    last = None
    for j, rel in enumerate(rel_times):
        if rel is None or not 0 <= rel <= span:
            continue
        last = j
        reached = _targets_reached(rel, num_frames, span)
        chosen.extend([j] * (reached - len(chosen)))
        if len(chosen) == num_frames:
            return chosen
    if last is None:
        return []
    return chosen + [last] * (num_frames - len(chosen))


def _select_by_time(num_frames: int, span: float) -> str:
    """ffmpeg ``select`` expression for the rule with a known T (= span).

    Registers: 0 = first frame's t, 3 = targets already taken; a frame is kept when it reaches a
    target not yet taken. Frames after T reach none.
    """
    s, n, e = repr(float(span)), num_frames, _TIE_EPS
    return (
        "st(0,if(eq(n,0),t,ld(0)));"
        f"st(1,if(lte(t-ld(0),{s}+{e}),clip(floor((t-ld(0))*{n}/{s}+0.5+{e}),0,{n}),0));"
        "st(2,gt(ld(1),ld(3)));"
        "st(3,max(ld(1),ld(3)));"
        "ld(2)"
    )


def _select_by_index(indices) -> str:
    """ffmpeg ``select`` expression keeping the frames with these decode indices."""
    return "+".join(f"eq(n,{i})" for i in sorted(set(indices)))


# ---------------------------------------------------------------------------------------------
# ffmpeg: command and stderr parsing.


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg (or IMAGEIO_FFMPEG_EXE)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


DECODERS = ("cpu", "cuda")


def resolve_decoder(choice: str) -> str:
    """``"auto"`` -> ``"cuda"`` when JAX runs on an NVIDIA GPU and the bundled ffmpeg has CUDA, else ``"cpu"``;
    ``"cpu"`` / ``"cuda"`` as given."""
    if choice != "auto":
        if choice not in DECODERS:
            raise ValueError(f"decoder = {choice!r}: expected one of {DECODERS + ('auto',)}")
        return choice
    import jax

    nvidia = jax.default_backend() == "gpu" and "nvidia" in jax.devices()[0].device_kind.lower()
    return "cuda" if nvidia and "cuda" in _hwaccels() else "cpu"


@functools.lru_cache(maxsize=1)
def _hwaccels() -> tuple[str, ...]:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-hwaccels"], capture_output=True, text=True, check=False)
    return tuple(line.strip() for line in out.stdout.splitlines()[1:] if line.strip())


def _command(path: str, window: float, select: str, size: int, decoder: str = "cpu", threads: int = 0) -> list[str]:
    # cuda: NVDEC decodes into GPU memory, the chosen frames are selected there and only they are converted
    # to 8-bit NV12 and copied to the host (then scaled exactly as the CPU decoder's frames).
    download = "scale_cuda=format=nv12,hwdownload,format=nv12," if decoder == "cuda" else ""
    graph = (
        "[0:V:0]showinfo@all=checksum=0,"  # every decoded frame (after autorotation and -t)
        f"select='{select}',{download}"
        f"scale={size}:{size}:flags={_SCALE_FLAGS},format=rgb24,"
        "showinfo@sel=checksum=0"  # the kept ones
    )
    hw = ["-hwaccel", "cuda", "-hwaccel_output_format", "cuda"] if decoder == "cuda" else []
    return [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info",
        *(["-threads", str(threads)] if threads else []), *hw,   # decoder threads (0: ffmpeg's choice)
        # local files only: "file:" stops "a:b.mp4" reading as a protocol, the whitelist stops
        # playlists/concat lists from reaching out
        "-protocol_whitelist", "file", "-t", f"{window:.6f}", "-i", "file:" + os.path.abspath(path),
        "-filter_complex", graph,
        "-an", "-sn", "-dn", "-fps_mode", "passthrough",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Decoded:
    n: int
    pts: int | None
    duration: int  # time-base units, 0 if unknown
    width: int
    height: int


_INFO_PREFIX = r"^\[showinfo@(all|sel) @ [^\]]*\] "
_RE_TIMEBASE = re.compile(_INFO_PREFIX + r"config in time_base: (\d+)/(\d+)")
_RE_FRAME = re.compile(
    _INFO_PREFIX + r"n:\s*(\d+) pts:\s*(-?\d+|NOPTS) .*?duration:\s*(-?\d+|NOPTS)? .*? s:(\d+)x(\d+) "
)
_RE_INPUT = re.compile(r"^Input #0, (.+), from ")
_RE_DURATION = re.compile(r"^\s+Duration: (N/A|(\d+):(\d+):(\d+(?:\.\d+)?))")
_RE_STREAM = re.compile(r"^\s+Stream #0:\d+\S*: (Video|Audio|Subtitle|Data|Attachment): (.*)$")
_RE_ROTATION = re.compile(r"display ?matrix: rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)


def _parse_header(lines) -> dict:
    """Metadata from ffmpeg's description of input #0 (before "Stream mapping"/"Output")."""
    header = {"format": None, "duration": None, "streams": []}
    for line in lines:
        if line.startswith(("Stream mapping:", "Output #", "[")):
            if line.startswith(("Stream mapping:", "Output #")):
                break
            continue
        if m := _RE_INPUT.match(line):
            header["format"] = m.group(1)
        elif m := _RE_DURATION.match(line):
            if m.group(1) != "N/A":
                header["duration"] = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
        elif m := _RE_STREAM.match(line):
            header["streams"].append({"type": m.group(1), "desc": m.group(2), "rotation": 0.0})
        elif (m := _RE_ROTATION.search(line)) and header["streams"]:
            header["streams"][-1]["rotation"] = float(m.group(1))
    return header


def _number(text: str | None) -> float | None:
    if not text:
        return None
    return float(text[:-1]) * 1000 if text.endswith("k") else float(text)


def _video_stream(header: dict) -> dict | None:
    """ffmpeg's ``0:V:0``: the first video stream that is not cover art; its codec, fps, rotation."""
    for s in header["streams"]:
        if s["type"] != "Video" or "(attached pic)" in s["desc"] or "(thumbnail)" in s["desc"]:
            continue
        desc = s["desc"]
        fps = re.search(r", (\d+(?:\.\d+)?k?) fps", desc) or re.search(r", (\d+(?:\.\d+)?k?) tbr", desc)
        return {
            "codec": desc.split(None, 1)[0].rstrip(","),
            "fps": _number(fps.group(1)) if fps else None,
            "rotation": int(round(s["rotation"])) % 360,
        }
    return None


def _parse_showinfo(lines):
    """(time base of the decoded frames, all decoded frames, pts of the kept frames)."""
    time_base, decoded, kept = None, [], []
    for line in lines:
        if not line.startswith("[showinfo@"):
            continue
        if m := _RE_TIMEBASE.match(line):
            if m.group(1) == "all":
                time_base = Fraction(int(m.group(2)), int(m.group(3)))
        elif m := _RE_FRAME.match(line):
            pts = None if m.group(3) == "NOPTS" else int(m.group(3))
            if m.group(1) == "all":
                dur = m.group(4)
                dur = int(dur) if dur and dur != "NOPTS" and int(dur) > 0 else 0
                decoded.append(_Decoded(int(m.group(2)), pts, dur, int(m.group(5)), int(m.group(6))))
            else:
                kept.append(pts)
    return time_base, decoded, kept


def _tail(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("[showinfo@")]
    return "\n".join(lines)[-_STDERR_TAIL:]


_CONTAINER_MAGIC = (  # (offset, bytes): files that claim to be video containers
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip"),
    (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"OggS"), (0, b"FLV"), (0, b"\x00\x00\x01\xba"),
    (0, b"\x00\x00\x01\xb3"), (0, b"\x30\x26\xb2\x75"), (0, b".RMF"),
)  # fmt: skip


def _looks_like_container(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
    return any(head[o : o + len(magic)] == magic for o, magic in _CONTAINER_MAGIC)


# ---------------------------------------------------------------------------------------------
# One ffmpeg run.


def _ffmpeg_env() -> dict:
    """The environment, with ffmpeg's log colours off (they would break the parsing)."""
    return {k: v for k, v in os.environ.items() if k != "AV_LOG_FORCE_COLOR"} | {"AV_LOG_FORCE_NOCOLOR": "1"}



@dataclasses.dataclass
class _Run:
    header: dict
    time_base: Fraction | None
    decoded: list
    kept_pts: list
    raw: np.ndarray  # uint8 [k, size, size, 3]
    returncode: int
    stderr: str


def _run(path: str, window: float, select: str, size: int, deadline: float, decoder: str = "cpu",
         threads: int = 0) -> _Run:
    cmd = _command(path, window, select, size, decoder, threads)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise VideoError("timeout", f"{path}: timed out before ffmpeg could run")
    try:
        # Argument list, no shell; close_fds=True (the default) lets CPython use vfork/posix_spawn,
        # no os.fork(), so no at-fork handlers (JAX's fork warning) run in JAX processes.
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=remaining,
                              close_fds=True, env=_ffmpeg_env())  # fmt: skip
    except subprocess.TimeoutExpired:
        raise VideoError("timeout", f"{path}: ffmpeg did not finish within the timeout") from None
    stderr = proc.stderr.decode("utf-8", errors="replace")
    lines = stderr.splitlines()
    time_base, decoded, kept = _parse_showinfo(lines)
    frame_bytes = size * size * 3
    raw = np.frombuffer(proc.stdout, np.uint8)
    raw = raw[: len(raw) // frame_bytes * frame_bytes].reshape(-1, size, size, 3)
    return _Run(_parse_header(lines), time_base, decoded, kept, raw, proc.returncode, stderr)


def _open_error(path: str, run: _Run) -> VideoError:
    """Why ffmpeg could not open or find a video stream in the input."""
    tail = _tail(run.stderr)
    if "No such file or directory" in run.stderr:
        return VideoError("missing_file", f"{path}: no such file")
    if run.header["format"] is None:
        if "Invalid data found when processing input" in run.stderr and not _looks_like_container(path):
            return VideoError("not_a_video", f"{path}: not a video (ffmpeg recognises no format)")
        return VideoError("decode_error", f"{path}: ffmpeg could not open it (damaged?):\n{tail}")
    if _NOT_VIDEO_FORMATS.search(run.header["format"]):
        return VideoError("not_a_video", f"{path}: not a video (an image or text: {run.header['format']})")
    kinds = sorted({"cover art" if "(attached pic)" in s["desc"] else s["type"].lower()
                    for s in run.header["streams"]})  # fmt: skip
    return VideoError("not_a_video", f"{path}: no video stream (streams: {', '.join(kinds) or 'none'})")


def _kept_indices(decoded, kept_pts, n_raw) -> list[int] | None:
    """Decode indices of the frames ffmpeg kept (matched by pts, in order); None if inconsistent."""
    out, j = [], 0
    for pts in kept_pts[:n_raw]:
        while j < len(decoded) and decoded[j].pts != pts:
            j += 1
        if j == len(decoded):
            return None
        out.append(j)
        j += 1
    return out


# ---------------------------------------------------------------------------------------------
# The public API.


def sample_frames(path, num_frames: int = NUM_FRAMES, seconds: float = SECONDS, size: int = SIZE,
                  timeout: float = 120.0, decoder: str = "cpu", threads: int = 0) -> SampledFrames:  # fmt: skip
    """Sample ``num_frames`` frames evenly spread over the first ``seconds`` of a video (paper:
    N = 18 over the first 6 s; shorter videos: over their real duration), each the whole frame
    squashed to ``size`` x ``size``, uint8 RGB, displayed orientation.

    ``decoder``: ``"cpu"`` (ffmpeg's software decoders) or ``"cuda"`` (NVDEC on an NVIDIA GPU, through the
    same ffmpeg); a video NVDEC cannot decode (no GPU, an unsupported codec or profile) is decoded on the CPU
    instead, and ``info["decoder"]`` / ``info["fallback"]`` say so. ``threads``: ffmpeg's decoder threads
    (0: ffmpeg's choice, one per core; one per worker when several videos decode side by side).

    Raises ``VideoError`` (``reason``: missing_file, not_a_video, decode_error, no_frames, timeout).
    """
    if num_frames < 1 or seconds <= 0 or size < 1:
        raise ValueError("num_frames and size must be >= 1, seconds > 0")
    if decoder not in DECODERS:
        raise ValueError(f"decoder = {decoder!r}: expected one of {DECODERS}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError("missing_file", f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoError("not_a_video", f"{path}: is a directory")
    deadline = time.monotonic() + timeout
    if decoder == "cuda":
        try:
            sampled = _sample(path, num_frames, seconds, size, deadline, "cuda", threads)
            sampled.info["decoder"] = "cuda"
            return sampled
        except VideoError as e:
            if e.reason == "timeout":
                raise
            fallback = f"NVDEC could not decode it ({e.reason}): decoded on the CPU"
    else:
        fallback = None
    sampled = _sample(path, num_frames, seconds, size, deadline, "cpu", threads)
    sampled.info["decoder"] = "cpu"
    if fallback:
        sampled.info["fallback"] = fallback
    return sampled


def _sample(path, num_frames, seconds, size, deadline, decoder, threads) -> SampledFrames:
    run, plan = _first_pass(path, num_frames, seconds, size, deadline, decoder, threads)
    kept = _kept_indices(plan.decoded, run.kept_pts, len(run.raw))
    if kept is None or not set(plan.chosen) <= set(kept):
        # T was unknown to ffmpeg (a video shorter than `seconds`), or a tie rounded the other way.
        run, kept = _select_again(path, plan, size, deadline, decoder, threads)
        plan.calls += 1
    position = {j: k for k, j in enumerate(kept)}
    frames = np.ascontiguousarray(run.raw[[position[j] for j in plan.chosen]])
    timestamps = np.array([float(plan.rel[j]) for j in plan.chosen], np.float64)
    return SampledFrames(frames, timestamps, _info(run.header, plan))


@dataclasses.dataclass
class _Plan:
    """What the first pass found: decoded frames, their exact relative times, T, the choice."""

    decoded: list
    time_base: Fraction
    pts0: int
    rel: list  # Fraction | None per decoded frame, from the first frame
    span: Fraction  # T
    duration: float | None  # D when the stream ended inside the window
    chosen: list  # decode index per target
    video: dict
    calls: int


def _first_pass(path, num_frames, seconds, size, deadline, decoder="cpu", threads=0) -> tuple[_Run, _Plan]:
    """The one ffmpeg call (T = seconds), checked; widened once if the window may have cut the video."""
    window, calls = seconds + _WINDOW_MARGIN, 1
    while True:
        run = _run(path, window, _select_by_time(num_frames, seconds), size, deadline, decoder, threads)
        video = _video_stream(run.header)
        if video is None or _NOT_VIDEO_FORMATS.search(run.header["format"] or ""):
            raise _open_error(path, run)
        if not run.decoded or run.time_base is None:
            if run.returncode != 0 and _DECODER_ERRORS.search(run.stderr):
                raise VideoError("decode_error", f"{path}: ffmpeg decoded no frame:\n{_tail(run.stderr)}")
            raise VideoError("no_frames", f"{path}: the video stream has no frame:\n{_tail(run.stderr)}")
        pts0 = next((d.pts for d in run.decoded if d.pts is not None), None)
        if pts0 is None:
            raise VideoError("decode_error", f"{path}: decoded frames carry no timestamps")
        span, duration, window_ok = _span(run.decoded, run.time_base, pts0, seconds, window)
        if window_ok or calls > 1:
            break
        window, calls = seconds + float(pts0 * run.time_base) + _WINDOW_MARGIN, calls + 1
    rel = [None if d.pts is None else (d.pts - pts0) * run.time_base for d in run.decoded]
    chosen = choose_frames(rel, num_frames, span)
    if not chosen:
        raise VideoError("no_frames", f"{path}: no frame with a usable timestamp")
    return run, _Plan(run.decoded, run.time_base, pts0, rel, span, duration, chosen, video, calls)


def _select_again(path, plan: _Plan, size, deadline, decoder="cpu", threads=0) -> tuple[_Run, list[int]]:
    """Second call: keep the chosen frames by decode index (known exactly now)."""
    last = max(plan.chosen)
    window = max(0.0, float(plan.decoded[last].pts * plan.time_base)) + _WINDOW_MARGIN
    run = _run(path, window, _select_by_index(plan.chosen), size, deadline, decoder, threads)
    same = [d.pts for d in run.decoded[: last + 1]] == [d.pts for d in plan.decoded[: last + 1]]
    kept = _kept_indices(run.decoded, run.kept_pts, len(run.raw)) if same else None
    if kept is None or not set(plan.chosen) <= set(kept):
        raise VideoError("decode_error", f"{path}: ffmpeg did not return the frames chosen:\n{_tail(run.stderr)}")
    return run, kept


def _info(header: dict, plan: _Plan) -> dict:
    first, video = plan.decoded[0], plan.video
    duration = plan.duration
    if duration is None:
        duration = _header_duration(header, plan.pts0 * plan.time_base, plan.span)
    return {
        "duration": duration,  # seconds from the first frame; None if unknown
        "fps": video["fps"] or _measured_fps(plan.rel),  # declared (average) rate, else measured
        "width": first.width,  # as displayed: showinfo sees the frames after autorotation
        "height": first.height,
        "rotation": video["rotation"],  # degrees counter-clockwise (display matrix), 0/90/180/270
        "codec": video["codec"],
        "has_audio": any(s["type"] == "Audio" for s in header["streams"]),
        "sampled_seconds": float(plan.span),  # T
        "ffmpeg_calls": plan.calls,
    }


def _span(decoded, tb: Fraction, pts0: int, seconds: float, window: float):
    """(T, D or None, window_ok): T = min(seconds, D); D known only when the stream ended in the window."""
    pts = [d.pts for d in decoded if d.pts is not None]
    gaps = [b - a for a, b in zip(pts, pts[1:]) if b > a]
    typical = statistics.median(gaps) if gaps else 0
    end = max((d.pts + (d.duration or typical) for d in decoded if d.pts is not None), default=pts0)
    rel_end = (end - pts0) * tb
    if rel_end >= Fraction(seconds):
        return Fraction(seconds), None, True
    # The stream ended before `seconds` -- unless the window stopped it. ffmpeg 9's input -t counts
    # from the stream's first frame (seen: a frame at or after `window` on ffmpeg's timeline, which
    # starts at the container's start); older versions may count from the container's start.
    window_ok = Fraction(window) - pts0 * tb > Fraction(seconds) or max(pts) * tb >= Fraction(window)
    return rel_end, float(rel_end), window_ok


def _header_duration(header: dict, first_t: Fraction, span: Fraction) -> float | None:
    """The container's duration, from the video's first frame; None if absent or contradicted."""
    if header["duration"] is None:
        return None
    duration = header["duration"] - float(first_t)
    return duration if duration >= float(span) else None


def _measured_fps(rel) -> float | None:
    times = [r for r in rel if r is not None]
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return float((len(times) - 1) / (times[-1] - times[0]))


def write_frames(sampled: SampledFrames, out_dir) -> None:
    """``out_dir/frame_00.png``.. and ``out_dir/frames.json`` (timestamps + info).

    Each file is written under a temporary name, then renamed (``os.replace``); frames.json last,
    so its presence means the set is complete. Stale ``frame_*.png`` from an earlier run are removed.
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(2, len(str(len(sampled.frames) - 1)))
    names = [f"frame_{i:0{digits}d}.png" for i in range(len(sampled.frames))]
    for name, frame in zip(names, sampled.frames):
        png = io.BytesIO()
        Image.fromarray(frame, "RGB").save(png, format="PNG")
        files.write_bytes(out / name, png.getvalue())
    for stale in out.glob("frame_*.png"):
        if re.fullmatch(r"frame_\d+\.png", stale.name) and stale.name not in names:
            stale.unlink()
    doc = {
        "num_frames": len(names),
        "size": int(sampled.frames.shape[1]),
        "timestamps": [float(t) for t in sampled.timestamps],
        "files": names,
        "info": sampled.info,
    }
    files.write_json(out / "frames.json", doc)
