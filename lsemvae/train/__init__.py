"""Training, evaluation, baselines and interpretability."""
