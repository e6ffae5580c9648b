"""Geo-captions: a vision model's structured reasoning from a photo to its known location."""
