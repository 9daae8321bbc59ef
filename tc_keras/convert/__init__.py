"""Published PyTorch weights: reading .pth files without torch (pth) and converting the
TimeCycle and CRW releases into tc_keras encoders (releases).

May import: tc_keras.atomic, tc_keras.model, tc_keras.export (encoder files) and this folder;
never train/, data/ or propagation/.
"""
