"""The model: the paper's boxes as Keras layers and the TimeCycle model.

encoder (ResNet trunk phi), batchnorm, initializers (the reference's), tracker (affinity f,
localizer g, sampler h), losses (l_theta, cycles, similarity), timecycle (cycle unroll and
train_step). May import: tc_keras.ops and this folder; nothing of data/, train/, propagation/,
export/ or convert/.
"""
