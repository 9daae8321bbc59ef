"""The training record format: one serialized tf.train.Example per video.

    id          bytes   the video's id (its path relative to the prepared folder or list file)
    frames      bytes   repeated: one JPEG per frame, in time order
    num_frames  int64   len(frames)
    height      int64   frame height in pixels
    width       int64   frame width in pixels
    fps         float   frame rate of `frames`

`encode_example` writes the protobuf wire format directly (a few lines of pure Python): prepare's
worker processes then never import TensorFlow, and a long video costs about twice its JPEG bytes
in memory instead of the several copies that building a tf.train.Example object makes.
`tests/test_prepare.py` checks the bytes against tf.train.Example's own parser.
"""

import io
import struct

from PIL import Image


def jpeg_bytes(frame, quality=90):
    """uint8 (H, W, 3) RGB frame -> JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, parts):
    """Length-delimited field `number` holding the concatenation of `parts`: list of bytes."""
    size = sum(len(p) for p in parts)
    return [_varint(number << 3 | 2), _varint(size)] + parts


def _entry(key, feature_parts):
    """One Features.feature map entry: key (field 1) -> Feature (field 2)."""
    return _field(1, _field(1, [key.encode()]) + _field(2, feature_parts))


def encode_example(video_id, jpegs, fps, height, width):
    """Serialized tf.train.Example of one video (see the module docstring), as bytes.

    Wire format: Example.features (1) -> Features.feature (1, map entries) -> Feature with
    bytes_list (1) / float_list (2) / int64_list (3), each a repeated field 1 (numbers packed).
    """
    frames = []
    for jpeg in jpegs:
        frames += [b"\x0a", _varint(len(jpeg)), jpeg]  # BytesList.value, field 1

    def int64(v):
        return _field(3, _field(1, [_varint(int(v))]))

    parts = (_entry("id", _field(1, _field(1, [video_id.encode()])))
             + _entry("frames", _field(1, frames))
             + _entry("num_frames", int64(len(jpegs)))
             + _entry("height", int64(height))
             + _entry("width", int64(width))
             + _entry("fps", _field(2, _field(1, [struct.pack("<f", fps)]))))
    return b"".join(_field(1, parts))
