"""Training: config, trainer loop, evaluation, metrics, whole runs."""
