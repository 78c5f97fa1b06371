"""Noise schedules, prediction-type conversions, loss terms and samplers."""
