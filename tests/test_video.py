"""Tests for tc_keras.data.video: decoding, resampling, resizing, writing, clear errors."""

import time

import numpy as np
import pytest
from PIL import Image

from tc_keras.data import video, video_writer
from tests import broken_files


def _smooth_frames(num, height=48, width=64):
    """Frames whose mean brightness encodes their index (survives lossy coding)."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(num):
        base = np.full((height, width), 20 + 7 * i, np.float64)
        rgb = np.stack([base, base + xx, base + yy], -1)
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return out


def _index_of(frame):
    return int(round((frame[..., 0].mean() - 20) / 7))


@pytest.fixture
def clip(tmp_path):
    return broken_files.write_video(tmp_path / "clip.mp4", _smooth_frames(30), fps=30)


def test_round_trip(clip):
    info = video.video_info(clip)
    assert info == dict(frames=30, fps=30.0, width=64, height=48)
    frames = list(video.iter_frames(clip))
    assert len(frames) == 30
    assert frames[0].dtype == np.uint8 and frames[0].shape == (48, 64, 3)
    assert [_index_of(f) for f in frames] == list(range(30))
    err = np.abs(frames[5].astype(float) - _smooth_frames(30)[5]).mean()
    assert err < 3.0


def test_resample_by_timestamps(clip):
    frames = list(video.iter_frames(clip, fps=10))
    # 1 s at 10 fps: source frames at times 0, 0.1, ..., 0.9 -> indices 0, 3, ..., 27.
    assert [_index_of(f) for f in frames] == list(range(0, 30, 3))
    assert len(list(video.iter_frames(clip, fps=12))) == 12
    # Upsampling repeats frames.
    assert len(list(video.iter_frames(clip, fps=60))) == 60


def test_resize_keeps_aspect_even_width(clip):
    frames = list(video.iter_frames(clip, height=30))
    assert frames[0].shape == (30, 40, 3)
    frames = list(video.iter_frames(clip, height=25))  # 64 * 25 / 48 = 33.3 -> 34
    assert frames[0].shape == (25, 34, 3)


def test_writer_pads_odd_sizes(tmp_path):
    path = broken_files.write_video(tmp_path / "odd.mp4", _smooth_frames(3, 33, 47), fps=12)
    assert video.video_info(path)[("width")] == 48
    assert next(video.iter_frames(path)).shape == (34, 48, 3)


def test_writer_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError):
        with video_writer.VideoWriter(path, fps=12) as writer:
            for frame in _smooth_frames(5):
                writer.write(frame)
            raise RuntimeError("simulated crash")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_size_change(tmp_path):
    with pytest.raises(video.VideoError, match="expected 64x48"):
        with video_writer.VideoWriter(tmp_path / "x.mp4", fps=12) as writer:
            writer.write(_smooth_frames(1)[0])
            writer.write(_smooth_frames(1, 32, 32)[0])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["zero", "text", "truncated", "missing"])
def test_bad_files_raise_video_error(tmp_path, clip, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 20)
    elif kind == "truncated":
        path.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with pytest.raises(video.VideoError, match=str(path)):
        list(video.iter_frames(path))
    with pytest.raises(video.VideoError, match=str(path)):
        video.video_info(path)


def _top_level_atoms(path):
    data, atoms, i = path.read_bytes(), [], 0
    while i + 8 <= len(data) and len(atoms) < 3:
        size = int.from_bytes(data[i:i + 4], "big")
        atoms.append(data[i + 4:i + 8].decode())
        i += size
    return atoms


@pytest.mark.parametrize("kind", ["mp4", "avi", "mkv"])
def test_truncated_video_names_file_and_frame(tmp_path, kind):
    """A file cut in half: the mp4 keeps its index (moov) at the start, the avi its header, so
    both open; the mkv knows only its duration. Frame-threaded decoding used to end quietly."""
    path = broken_files.truncated_video(tmp_path / f"cut.{kind}", kind, frames=40)
    if kind == "mp4":
        assert _top_level_atoms(path)[:2] == ["ftyp", "moov"]
    with pytest.raises(video.TruncatedVideo) as e:
        list(video.iter_frames(path))
    of = "of about 40" if kind == "mkv" else "of 40"
    assert str(e.value).startswith(f"{path}: truncated video: decoding stopped at frame "
                                   f"{e.value.frames} {of}")
    assert 10 < e.value.frames < 30
    with pytest.raises(video.TruncatedVideo, match=f"frame {e.value.frames} "):
        list(video.iter_frames(path, fps=6, height=32))


def test_truncated_video_yields_frames_before_the_cut(tmp_path):
    path = broken_files.truncated_video(tmp_path / "cut.mp4", frames=40)
    frames = []
    with pytest.raises(video.TruncatedVideo) as e:
        for frame in video.iter_frames(path):
            frames.append(frame)
    assert len(frames) == e.value.frames  # every complete frame, also from the decoder's threads


def test_video_cut_at_a_packet_boundary_is_truncated(tmp_path):
    path = broken_files.write_container(tmp_path / "v.mp4", broken_files.noise_frames(40), "mp4",
                                        "libx264", movflags="faststart")
    import av  # noqa: PLC0415

    with av.open(str(path)) as container:
        offsets = [p.pos for p in container.demux(container.streams.video[0]) if p.size]
    path.write_bytes(path.read_bytes()[:offsets[25]])
    with pytest.raises(video.TruncatedVideo, match=r"frame 25 of 40 \(the data ends at 2\.08 s "
                       r"of 3\.33 s\)"):
        list(video.iter_frames(path))


@pytest.mark.parametrize("kind", ["mp4", "avi", "mkv"])
def test_complete_videos_of_each_container_decode_whole(tmp_path, kind):
    path = broken_files.truncated_video(tmp_path / f"whole.{kind}", kind, frames=30, fraction=1)
    assert len(list(video.iter_frames(path))) == 30


def _write_folder(folder, names, sizes=None):
    folder.mkdir()
    for i, name in enumerate(names):
        h, w = sizes[i] if sizes else (24, 32)
        Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(folder / name)
    return folder


def test_frame_folder(tmp_path):
    folder = _write_folder(tmp_path / "f", ["00010.png", "00008.png", "00009.png"])
    frames = list(video.iter_frames(folder))
    assert [int(f[0, 0, 0]) for f in frames] == [10, 20, 0]  # numeric order 8, 9, 10
    assert video.video_info(folder) == dict(frames=3, fps=None, width=32, height=24)
    assert next(video.iter_frames(folder, height=12)).shape == (12, 16, 3)
    with pytest.raises(video.VideoError, match="timestamps"):
        video.iter_frames(folder, fps=12)


def test_frame_folder_resampled_with_its_frame_rate(tmp_path):
    folder = _write_folder(tmp_path / "f", [f"{i:05d}.png" for i in range(6)])
    frames = list(video.iter_frames(folder, fps=12, folder_fps=24))  # every other frame
    assert [int(f[0, 0, 0]) for f in frames] == [0, 20, 40]
    assert len(list(video.iter_frames(folder, fps=24, folder_fps=12))) == 12


def test_frame_folder_gap_names_file(tmp_path):
    folder = _write_folder(tmp_path / "gap", ["00001.jpg", "00002.jpg", "00004.jpg"])
    with pytest.raises(video.VideoError, match=r"gap.*00004\.jpg") as e:
        video.iter_frames(folder)
    assert str(folder) in str(e.value)


def test_frame_folder_numbered_in_constant_steps(tmp_path):
    """One frame in 25 (VIP_Fine's annotated frames): read in order; another step is a gap, and
    resampling by frame rate needs consecutive frames."""
    folder = _write_folder(tmp_path / "vip", ["000000000051.jpg", "000000000001.jpg",
                                              "000000000026.jpg"])
    assert [p.name for p in video.list_frame_files(folder)] == [
        "000000000001.jpg", "000000000026.jpg", "000000000051.jpg"]
    assert len(list(video.iter_frames(folder))) == 3
    with pytest.raises(video.VideoError, match="steps of 25"):
        video.iter_frames(folder, fps=12, folder_fps=24)
    (folder / "000000000051.jpg").rename(folder / "000000000076.jpg")
    with pytest.raises(video.VideoError, match=r"gap.*expected 51.*000000000076\.jpg"):
        video.list_frame_files(folder)


def test_frame_folder_mixed_sizes_names_file(tmp_path):
    folder = _write_folder(tmp_path / "mixed", ["00000.png", "00001.png", "00002.png"],
                           sizes=[(24, 32), (24, 32), (20, 32)])
    with pytest.raises(video.VideoError, match=r"00002\.png is 32x20"):
        video.iter_frames(folder)


def test_empty_frame_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(video.VideoError, match="no frame files"):
        video.iter_frames(tmp_path / "empty")


@pytest.mark.parametrize("name, size, frames", [
    ("real-clips/bikes.mp4", (272, 640), 250),
    ("real-clips/carphone_pristine.mp4", (144, 176), 120),
    ("jhmdb-catch/Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2.avi", (240, 320), 40),
    ("jhmdb-catch/frames", (240, 320), 40),
])
def test_real_videos(shared_data, name, size, frames):
    path = shared_data / name
    decoded = list(video.iter_frames(path))
    assert len(decoded) == frames
    assert decoded[0].shape == size + (3,)
    assert 20 < decoded[len(decoded) // 2].mean() < 235  # a real picture, not blank
    info = video.video_info(path, exact=True)
    assert (info["height"], info["width"]) == size and info["frames"] == frames
    small = next(video.iter_frames(path, height=64))
    assert small.shape[0] == 64 and small.shape[1] % 2 == 0


def test_real_mp4_with_index_at_start_cut_in_half(shared_data, tmp_path):
    """bikes.mp4 remuxed with its index first (as streaming sites serve mp4), then cut in half."""
    import av  # noqa: PLC0415

    fast = tmp_path / "bikes.mp4"
    with av.open(str(shared_data / "real-clips/bikes.mp4")) as src, \
            av.open(str(fast), "w", options=dict(movflags="faststart")) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    assert _top_level_atoms(fast)[:2] == ["ftyp", "moov"]
    assert len(list(video.iter_frames(fast))) == 250
    broken_files.cut(fast)
    with pytest.raises(video.TruncatedVideo, match=rf"{fast}: .* at frame 116 of 250"):
        list(video.iter_frames(fast, fps=12, height=64))


def test_real_video_resampled_to_12fps(shared_data):
    frames = list(video.iter_frames(shared_data / "real-clips/bikes.mp4", fps=12, height=64))
    assert len(frames) == 120  # 250 frames at 25 fps = 10 s


def test_prefetched_keeps_order_passes_errors_and_stops():
    import threading

    assert list(video.prefetched(iter(range(20)), depth=3)) == list(range(20))

    def broken():
        yield 1
        yield 2
        raise video.VideoError("clip.mp4: decoding failed at frame 2")

    got = []
    with pytest.raises(video.VideoError, match="frame 2"):
        for item in video.prefetched(broken()):
            got.append(item)
    assert got == [1, 2]
    before = threading.active_count()

    def wait_for_threads():
        for _ in range(100):
            if threading.active_count() <= before:
                return True
            time.sleep(0.05)
        return False

    stream = video.prefetched(iter(range(10 ** 6)), depth=2)
    next(stream)
    stream.close()  # the producer thread ends
    assert wait_for_threads()
    # Closed after the producer has read everything and waits on a full queue with its end mark;
    # the source generator is closed too (its open file released).
    closed = []

    def source():
        try:
            yield from range(3)
        finally:
            closed.append(True)

    stream = video.prefetched(source(), depth=2)
    next(stream)
    time.sleep(0.3)
    stream.close()
    assert wait_for_threads() and closed == [True]
