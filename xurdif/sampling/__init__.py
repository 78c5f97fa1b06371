"""A model's own sampler: the default recorded in its file, and how it is chosen."""
