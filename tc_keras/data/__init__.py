"""Data: video decoding and writing, training shards (writing, reading back), the tf.data clip
pipeline and the contrastive walk's clips (walk_clips), synthetic videos, label files (masks,
keypoints), the DAVIS layout.

Reading shards (shard_files, records, pipeline, walk_clips) never imports PyAV: only video,
video_writer, prepare (+ pool) and synthetic do. May import: tc_keras.ops, tc_keras.atomic and
this folder; nothing of model/, train/, propagation/, export/ or convert/.
"""
