"""Independent reference implementations that popjax's tests and benchmarks compare against.

``torch_resnet``: a PyTorch ResNet50 with torchvision's parameter names (needs the ``test`` extra's torch).
``references``: flax's own layers arranged as popjax's modules (the biLSTM as ``nn.RNN`` over
``nn.OptimizedLSTMCell``), with the parameter trees of popjax's.
"""
