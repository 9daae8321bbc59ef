"""Video decoding with PyAV, and frame folders (writing: tc_keras.data.video_writer).

`iter_frames` streams uint8 RGB frames (H, W, 3) from a video file (.mp4 .avi .mkv .webm .mov, or
anything else FFmpeg opens) or from a folder of numbered .jpg/.jpeg/.png frames, one frame at a
time (never the whole video in memory), optionally resampled to a frame rate by timestamps and
resized to a height with the aspect ratio kept. `video_info` reads the size, rate and frame count
without decoding where the container allows it.

Errors a user can cause (missing, empty, truncated or non-video file, a frame folder with a gap in
its numbering or frames of different sizes) raise `VideoError`, whose message names the path and
what was wrong. A file whose data stops before the end its headers declare (a cut download or
copy) raises `TruncatedVideo` after the frames before the cut, naming the frame where decoding
stopped: never a shorter video without a word.
"""

import pathlib
import queue
import re
import threading

import av
import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
# swscale interpolation for resizing decoded frames; area averaging avoids aliasing when shrinking.
_INTERPOLATION = "AREA"
_FRAME_NUMBER = re.compile(r"(\d+)$")


class VideoError(ValueError):
    """A video file or frame folder that cannot be read; the message names the path."""


class TruncatedVideo(VideoError):
    """A video whose data stops before its end (a cut download or copy).

    Attributes:
      path: the file; frames: the complete frames before the cut (at the source rate), i.e. the
        index of the frame where decoding stopped; total: the frame count the headers promise
        ("250", or "about 40" from a duration), or None; detail: the message without the path.
    """

    def __init__(self, path, frames, total, why):
        self.path, self.frames, self.total = path, frames, total
        of = f" of {total}" if total else ""
        self.detail = f"truncated video: decoding stopped at frame {frames}{of} ({why})"
        super().__init__(f"{path}: {self.detail}")


def even_width(width, height, new_height):
    """Width that keeps the aspect ratio at `new_height`, rounded to an even number (>= 2)."""
    return max(2, int(round(width * new_height / height / 2.0)) * 2)


# ----------------------------------------------------------------------------- frame folders


def list_frame_files(folder):
    """Sorted frame files of a folder; checks numbering gaps and that all frames share one size.

    Files whose names end in a number (00000.jpg, img_12.png) are ordered by that number, which must
    increase by one constant step from file to file: 1 for every frame of a video, or e.g. 25
    for a folder that keeps one frame in 25 (VIP_Fine's annotated frames); any other difference
    is a gap. Otherwise names are sorted as strings.
    Raises VideoError naming the folder and the offending file.
    """
    folder = pathlib.Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS]
    if not files:
        raise VideoError(f"{folder}: no frame files ({', '.join(FRAME_EXTENSIONS)}) in this folder")
    numbers = [_FRAME_NUMBER.search(p.stem) for p in files]
    if all(numbers):
        pairs = sorted(zip((int(m.group(1)) for m in numbers), files))
        files = [p for _, p in pairs]
        step = pairs[1][0] - pairs[0][0] if len(pairs) > 1 else 1
        for (prev, prev_path), (num, path) in zip(pairs, pairs[1:]):
            if num != prev + max(step, 1):
                what = "duplicate frame number" if num == prev else f"gap in frame numbering " \
                    f"(expected {prev + max(step, 1)} after {prev_path.name})"
                raise VideoError(f"{folder}: {what} at {path.name}")
    else:
        files.sort()
    size = None
    for path in files:
        try:
            with Image.open(path) as im:
                this = im.size
        except (OSError, Image.DecompressionBombError) as e:
            raise VideoError(f"{folder}: cannot read frame {path.name}: {e}") from None
        if size is None:
            size, first = this, path
        elif this != size:
            raise VideoError(f"{folder}: frame {path.name} is {this[0]}x{this[1]} but "
                             f"{first.name} is {size[0]}x{size[1]}; all frames must share one size")
    return files


def _frame_step(files):
    """Number difference of the first two `list_frame_files` files (1 when unnumbered)."""
    numbers = [_FRAME_NUMBER.search(p.stem) for p in files[:2]]
    return int(numbers[1].group(1)) - int(numbers[0].group(1)) if all(numbers) else 1


def _iter_folder(folder, files, height):
    for path in files:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if height is not None and im.height != height:
                    im = im.resize((even_width(im.width, im.height, height), height),
                                   Image.BILINEAR)
                yield np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise VideoError(f"{folder}: cannot decode frame {path.name}: {e}") from None


# ----------------------------------------------------------------------------- video files


def _check_file(path):
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if not path.is_file():
        raise VideoError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes), expected a video")


def _open(path):
    """Opens a container and its first video stream, or raises VideoError."""
    _check_file(path)
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: not a readable video ({e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream in this file")
    return container, container.streams.video[0]


def _stream_rate(stream):
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _iter_file(path, fps, height):
    container, stream = _open(path)
    src_rate = _stream_rate(stream) or 25.0
    count = 0
    try:
        decoded = _decode_rgb(path, container, stream, height)
        if fps is None:
            for _, frame in decoded:
                count += 1
                yield frame
        else:
            for frame in _resample(decoded, fps, src_rate):
                count += 1
                yield frame
    finally:
        container.close()
    if count == 0:
        raise VideoError(f"{path}: no decodable frames (empty, truncated or corrupt video)")


def _declared_end(container, stream, rate):
    """(seconds, frame count as text) the headers say the video lasts, or (None, None).

    The stream's own frame count (mp4, avi) or duration first; the container's duration only
    when the stream has neither (mkv, webm), as it may also cover audio.
    """
    if stream.frames and rate:
        return stream.frames / rate, str(stream.frames)
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1e6  # av.time_base: microseconds
    else:
        return None, None
    return seconds, f"about {round(seconds * rate)}"


def _decode_rgb(path, container, stream, height):
    """Yields (time in seconds, uint8 RGB frame) in presentation order; raises TruncatedVideo.

    Threaded decoding (thread_type AUTO: faster for large frames on many cores) swallows the
    error of a packet cut short, so truncation is detected from the packets instead: one the demuxer
    flags corrupt (an index promising more bytes than the file holds: mp4 with its index at the
    start, avi), or packets of all streams ending before the duration the headers declare (a cut
    mkv / webm, or an mp4 / avi cut at a packet boundary).
    """
    stream.thread_type = "AUTO"
    src_rate = _stream_rate(stream) or 25.0
    end, total = _declared_end(container, stream, src_rate)
    index = packets = 0  # frames decoded, non-empty video packets read
    last = None  # end time (s) of the packets read, all streams

    def frames(packet):
        nonlocal index
        for frame in stream.decode(packet):
            if height is not None and frame.height != height:
                rgb = frame.to_ndarray(format="rgb24", height=height,
                                       width=even_width(frame.width, frame.height, height),
                                       interpolation=_INTERPOLATION)
            else:
                rgb = frame.to_ndarray(format="rgb24")
            # Frames flushed out of the decoder carry no time base: the stream's is theirs.
            t = (float(frame.pts * stream.time_base) if frame.pts is not None and stream.time_base
                 else index / src_rate)
            index += 1
            yield t, rgb

    try:
        for packet in container.demux():
            if packet.size == 0:  # a flush packet at the end of a stream
                continue
            if packet.is_corrupt:
                yield from frames(None)  # the complete frames still inside the decoder
                raise TruncatedVideo(path, packets, total, "the data of this frame is cut short")
            if packet.pts is not None and packet.time_base:
                t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                last = t if last is None else max(last, t)
            if packet.stream.index != stream.index:
                continue
            packets += 1
            yield from frames(packet)
        yield from frames(None)
    except av.FFmpegError as e:
        raise VideoError(f"{path}: decoding failed at frame {index} ({e}); the file is "
                         "truncated or corrupt") from None
    if end is not None and last is not None:
        start = float(container.start_time or 0) / 1e6
        # Tolerance: two frames, or 2% of the length (rounded durations, edit lists).
        if last - start < end - max(2.0 / src_rate, 0.02 * end):
            raise TruncatedVideo(path, packets, total,
                                 f"the data ends at {last - start:.2f} s of {end:.2f} s")


def _resample(decoded, fps, src_rate):
    """Nearest-in-time resampling of (time, frame) pairs to `fps` (frames repeat when fps > source).

    Output frame i shows time t0 + i / fps, where t0 is the first frame's time; the video is taken
    to last until half a source frame after its last frame.
    """
    step = 1.0 / fps
    prev_t = prev = t0 = None
    i = 0

    def last_frame():  # the frame held back, until half a source frame after it
        nonlocal i
        if prev is not None:
            while i * step < prev_t - t0 + 0.5 / src_rate:
                yield prev
                i += 1

    try:
        for t, frame in decoded:
            if prev is None:
                t0, prev_t, prev = t, t, frame
                continue
            if t <= prev_t:  # broken or repeated timestamp: keep the order of decoding
                t = prev_t + 1.0 / src_rate
            middle = 0.5 * (prev_t + t) - t0
            while i * step < middle:
                yield prev
                i += 1
            prev_t, prev = t, frame
    except VideoError:  # a cut video: its frames before the cut all come out, then the error
        yield from last_frame()
        raise
    yield from last_frame()


def iter_frames(path, fps=None, height=None, folder_fps=None):
    """Streams uint8 RGB frames (H, W, 3) from a video file or a folder of frames.

    Args:
      path: a video file, or a folder of numbered .jpg/.jpeg/.png frames.
      fps: optional frame rate to resample to, by timestamps (nearest frame in time). A frame
        folder has no timestamps: resampling it needs `folder_fps`.
      height: optional output height in pixels; the width keeps the aspect ratio, rounded to even.
      folder_fps: the frame rate of a frame folder (frame i shows time i / folder_fps), e.g. 24
        for DAVIS; ignored for video files.
    Returns:
      An iterator of (H, W, 3) uint8 arrays. Paths, folders and container headers are checked
      before this returns; decoding errors and truncation (`TruncatedVideo`) surface while
      iterating. Both raise VideoError.
    """
    path = pathlib.Path(path)
    if fps is not None and fps <= 0:
        raise VideoError(f"{path}: fps must be positive, got {fps}")
    if height is not None and height < 2:
        raise VideoError(f"{path}: height must be at least 2 pixels, got {height}")
    if path.is_dir():
        files = list_frame_files(path)
        frames = _iter_folder(path, files, height)
        if fps is None:
            return frames
        if folder_fps is None or folder_fps <= 0:
            raise VideoError(f"{path}: a frame folder has no timestamps; resampling to {fps} fps "
                             "needs its frame rate (folder_fps)")
        if len(files) > 1 and _frame_step(files) != 1:
            raise VideoError(f"{path}: frames numbered in steps of {_frame_step(files)}; "
                             "resampling to a frame rate needs consecutive frames")
        return _resample(((i / folder_fps, f) for i, f in enumerate(frames)), fps, folder_fps)
    container, _ = _open(path)  # fail early on missing / empty / non-video files
    container.close()
    return _iter_file(path, fps, height)


def video_info(path, exact=False):
    """dict(frames, fps, width, height) of a video file or frame folder, without decoding frames.

    `frames` comes from the container header, or from counting non-empty packets when the header
    has no count (mkv, webm) or `exact` is set: AVI headers count dropped-frame slots that decode
    to nothing. `fps` is the average rate (None for a frame folder).
    """
    path = pathlib.Path(path)
    if path.is_dir():
        files = list_frame_files(path)
        with Image.open(files[0]) as im:
            width, height = im.size
        return dict(frames=len(files), fps=None, width=width, height=height)
    container, stream = _open(path)
    try:
        frames = stream.frames
        if exact or not frames:
            try:
                frames = sum(1 for p in container.demux(stream) if p.size)
            except av.FFmpegError as e:
                raise VideoError(f"{path}: cannot read packets ({e})") from None
        return dict(frames=int(frames), fps=_stream_rate(stream),
                    width=stream.codec_context.width, height=stream.codec_context.height)
    finally:
        container.close()


def prefetched(items, depth=4):
    """Yields `items` (e.g. decoded frames) while a thread already produces the next `depth`.

    Decoding runs beside whatever consumes the frames (PyAV, PIL and TensorFlow release the
    GIL). An error in the producer is raised in the consumer, at the item where it happened;
    closing the generator stops the thread.
    """
    done = object()
    slots = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry):  # False once the consumer has stopped (never blocks past that)
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((done, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator: its finally blocks (open files) run now
                close()

    thread = threading.Thread(target=produce, daemon=True, name="prefetch")
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
