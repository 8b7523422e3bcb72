"""One trial from config to row (``trial.run_trial``), its checked options, sweeps with claims and resume, the
typed row schema and its one reader, config hashes, and collecting a sweep into tables."""
