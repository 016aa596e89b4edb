"""Training-side instrumentation: metrics a training loop exposes, and cost-aware checkpoints.

Importing this package never imports torch; CheckpointManager imports it when it first saves or loads.
"""

from exporter.training.checkpoint_saver import Checkpoint, CheckpointManager
from exporter.training.metrics import TrainingMetrics

__all__ = ["Checkpoint", "CheckpointManager", "TrainingMetrics"]
