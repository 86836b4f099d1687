"""Multi-label zero-shot learning (NUS-WIDE, Open Images V4): Epsilon-R, the BiAM and global-linear baselines, the
BiAM-layout readers, masked metrics, and the embedded multi-label world."""

from unseen.multilabel import baselines, epsilon, task  # noqa: F401  (registers the models and datasets)
