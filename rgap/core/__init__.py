"""Foundations every package may use: typed errors, typed option reading, atomic file writes, building objects
from Hydra config groups. Imports nothing else of ``rgap``."""
