"""The attack interface: what every attack implements (``Attack.reconstruct``) and sees (``SharedGradient``),
what it returns (``AttackResult``), the trace recorder, and the training losses a shared gradient comes from."""

from rgap.attack.interface import Attack, AttackFacts, AttackResult, SharedGradient, TracePoint, TraceRecorder

__all__ = ["Attack", "AttackFacts", "AttackResult", "SharedGradient", "TracePoint", "TraceRecorder"]
