"""The R-GAP algorithm: a model and a shared gradient in, the reconstructed input out.

It imports nothing of data, model zoo, metrics, trials or files (``tests/test_architecture.py`` checks it):

* ``recursive``: the attack (``RGAP``), walking the network from the head down;
* ``heads``: the top layer's roots (the logistic / cross-entropy head);
* ``network``, ``chainops``, ``activations``: reading a model into invertible stages;
* ``inverters``, ``composite``: one stage's constraint system (conv, linear, folded batch norm, pooling);
* ``solvers``, ``matfree``, ``structured``, ``preconditioners``, ``circulant``, ``weightcache``: solving it
  (dense, conjugate gradients, and the structured solver of conv layers);
* ``rank``, ``verdict``: the rank analysis and the plain-words verdict drawn from it.
"""
