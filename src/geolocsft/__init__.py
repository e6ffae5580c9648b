"""geolocsft: planet-scale visual geolocation by supervised fine-tuning, as a Snakemake workflow."""

__version__ = "0.1.0"
