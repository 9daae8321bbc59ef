"""Where a training clip's frames sit in a video (docs/METHOD.md, "Training data and schedule").

Free of TensorFlow, so that `prepare` (whose decoding workers never import it) and the tf.data
`pipeline` share these numbers: past frames FRAME_GAP apart at 12 fps, the target TARGET_OFFSET
frames after the first past frame.
"""

# Past frames 2 apart at 12 fps, the target 15 frames after the first
# (docs/METHOD.md, "Training data and schedule").
FRAME_GAP = 2
TARGET_OFFSET = 15
# Frames s .. s + TARGET_OFFSET: what a clip spans at its nominal offsets.
CLIP_FRAMES = TARGET_OFFSET + 1
