"""Training side of bonexr: indexing, patient split, synthetic data, models, evaluation, export."""
