"""The federated client: computes the gradient of its batch and applies its defense before sharing it."""
