"""Hugging Face Hub: resumable downloads on the submit host, unpacking, and a loopback stand-in."""
