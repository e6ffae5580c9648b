"""Supervised fine-tuning: LLaMA-Factory datasets, training runs and prediction."""
