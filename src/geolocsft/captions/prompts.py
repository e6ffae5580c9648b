"""Versioned prompt templates under ``config/prompts/<version>.txt``.

A template uses ``${latitude}``, ``${longitude}`` and ``${place}``. Its sha256 (of the file's
bytes) is part of every caption's identity: editing a prompt never silently reuses captions
made with the old text.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

from geolocsft.errors import GeolocsftError

PLACEHOLDERS = frozenset({"latitude", "longitude", "place"})


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt file: its version name, text and sha256."""

    version: str
    text: str
    sha256: str

    @classmethod
    def load(cls, path: Path) -> PromptTemplate:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise GeolocsftError(f"{path}: cannot read the prompt template: {exc}") from exc
        text = data.decode("utf-8")
        template = string.Template(text)
        if not template.is_valid():
            raise GeolocsftError(f"{path}: invalid ${{...}} placeholder syntax in the prompt")
        unknown = set(template.get_identifiers()) - PLACEHOLDERS
        if unknown:
            raise GeolocsftError(
                f"{path}: unknown placeholders {sorted(unknown)}; use {sorted(PLACEHOLDERS)}"
            )
        return cls(version=path.stem, text=text, sha256=hashlib.sha256(data).hexdigest())

    def render(self, latitude: float, longitude: float, place: str | None) -> str:
        """The prompt for one image, with its true coordinates and place name."""
        return string.Template(self.text).substitute(
            latitude=f"{latitude:.6f}",
            longitude=f"{longitude:.6f}",
            place=place or "an unnamed place",
        )
