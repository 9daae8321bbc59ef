"""Video files for tests: whole ones, and real broken inputs: videos cut short (index at the
start), cut files of any kind."""

import pathlib

import av
import numpy as np

from tc_keras.data import video_writer


def write_video(path, frames, fps):
    """Writes uint8 (H, W, 3) RGB frames to an H.264 mp4 with tc_keras's VideoWriter; the path."""
    with video_writer.VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.path


def noise_frames(num, height=64, width=96, seed=0):
    """Random frames: every frame costs many bytes, so a byte cut lands inside a frame's data."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(num)]


def write_container(path, frames, fmt, codec, fps=12, **options):
    """Writes frames with PyAV: e.g. ("mp4", "libx264", movflags="faststart"), ("avi", "mpeg4")."""
    container = av.open(str(path), "w", format=fmt, options=options)
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return pathlib.Path(path)


def cut(path, fraction=0.5, out=None):
    """Keeps the first `fraction` of a file's bytes (in place, or into `out`); returns the path."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    out = pathlib.Path(out or path)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def truncated_video(path, kind="mp4", frames=40, fraction=0.5):
    """A video of `frames` noise frames cut to `fraction` of its bytes.

    kind: "mp4" (H.264, its index, the moov atom, at the start: the demuxer knows every frame it
    misses), "avi" (MPEG-4 part 2) or "mkv" (H.264; no frame count in its header, only a duration).
    """
    fmt, codec, options = dict(mp4=("mp4", "libx264", dict(movflags="faststart")),
                               avi=("avi", "mpeg4", {}),
                               mkv=("matroska", "libx264", {}))[kind]
    write_container(path, noise_frames(frames), fmt, codec, **options)
    return cut(path, fraction)
