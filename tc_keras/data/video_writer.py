"""Writing videos: H.264 mp4 (yuv420p) with PyAV, through a temporary name renamed on success."""

import fractions
import pathlib

import av
import numpy as np

from tc_keras import atomic
from tc_keras.data.video import VideoError


class VideoWriter:
    """Writes uint8 RGB frames to an H.264 mp4 (yuv420p); use as a context manager.

    Frames are written to a hidden temporary file beside `path` (tc_keras.atomic) renamed to `path`
    only when the writer closes without an exception, so an interrupted run never leaves a
    complete-looking file. Odd frame
    sizes are padded to even (yuv420p needs even sizes) by repeating the last row / column.

    Args:
      path: output .mp4 path.
      fps: frame rate (int, float or Fraction).
      crf: x264 constant rate factor (lower = better quality; 18 is visually near lossless).
      preset: x264 speed preset.
    """

    def __init__(self, path, fps, crf=18, preset="veryfast"):
        self.path = pathlib.Path(path)
        self.fps = fps
        self.crf = crf
        self.preset = preset
        self._staged = None
        self._container = None
        self._stream = None
        self._size = None
        self.frames_written = 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        (self.close if exc_type is None else self.abort)()
        return False

    def write(self, frame):
        """Appends one (H, W, 3) uint8 RGB frame; all frames must have the first frame's size."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise VideoError(f"{self.path}: expected uint8 (H, W, 3) RGB frames, got "
                             f"{frame.dtype} {frame.shape}")
        if self._container is None:
            self._start(frame.shape[:2])
        if frame.shape[:2] != self._size:
            raise VideoError(f"{self.path}: frame {self.frames_written} is "
                             f"{frame.shape[1]}x{frame.shape[0]}, expected "
                             f"{self._size[1]}x{self._size[0]} like the first frame")
        h, w = frame.shape[:2]
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf = vf.reformat(format="yuv420p")
        vf.pts = self.frames_written
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames_written += 1

    def _start(self, size):
        self._size = tuple(size)
        rate = fractions.Fraction(self.fps).limit_denominator(1001)
        self._staged = atomic.Staged(self.path)
        self._container = av.open(str(self._staged.path), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.height = size[0] + size[0] % 2
        self._stream.width = size[1] + size[1] % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = 1 / rate
        self._stream.options = {"crf": str(self.crf), "preset": self.preset}

    def close(self):
        """Flushes the encoder and renames the temporary file to `path`."""
        if self._container is None:
            if self.frames_written == 0:
                raise VideoError(f"{self.path}: no frames were written")
            return
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None
        self._staged.commit()

    def abort(self):
        """Closes and deletes the temporary file; `path` is left untouched."""
        if self._container is not None:
            try:
                self._container.close()
            except av.FFmpegError:
                pass
            self._container = None
        if self._staged is not None:
            self._staged.discard()

