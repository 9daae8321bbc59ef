"""Label propagation: protocols (presets) and their command-line flags (protocol_flags), label
maps to and from the feature grid (label_maps), the tiling of the radius restriction (tiles),
the pure label step (label_step), its key-window form for the compiled path (windows: the
tables, window_step: the step), the context ring with its compiled step (context), streaming
over a video (propagate), metrics (DAVIS J/F, PCK, mIoU) and overlays (visualize).

May import: tc_keras.ops, tc_keras.flag_fields, tc_keras.model (the feature stride),
tc_keras.data (label files) and this folder; never train/, export/ or convert/.
"""
