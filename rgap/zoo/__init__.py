"""What a trial attacks: the networks (``models``), their weights (``checkpoints``, ``training``) and the private
images (``data``)."""
