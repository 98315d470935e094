"""Machine-specific kernels for popjax's models, each with the parameters and results of the plain flax/XLA
computation it replaces (and tested against it):

* ``cpu_conv``: the convolution and max-pool forms XLA:CPU runs fastest (Winograd, pointwise and shifted
  matrix products, bfloat16 max pool), plugged into ``models.ResNet`` by ``Backbone`` on a CPU;
* ``lstm``: the LSTM recurrence with a hand-written backward pass, plugged into ``models.LSTM`` by training.
"""
