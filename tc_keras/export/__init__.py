"""Models on disk: encoder files and the --encoder loader (encoder_io) with its --depth / --seed
flags (encoder_flags), SavedModel / TFLite graphs (graphs) and the runtimes that run them for
propagation (runtimes).

May import: tc_keras.ops, tc_keras.atomic, tc_keras.model, tc_keras.propagation and this folder;
never train/, data/ or convert/.
"""
