"""Hugging Face Hub: resumable downloads on the submit host and unpacking."""
