"""The model: the paper's boxes as Keras layers, the TimeCycle model and the contrastive walk.

encoder (ResNet trunk phi), batchnorm, initializers (the reference's), tracker (affinity f,
localizer g, sampler h), losses (l_theta, cycles, similarity), objective_model (the training
step both models share), timecycle (cycle unroll), walk (the walk's transitions and loss),
contrastive_walk (its model). May import: tc_keras.ops and this folder; nothing of data/,
train/, propagation/, export/ or convert/.
"""
