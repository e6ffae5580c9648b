"""Errors that carry a message meant for the user (no traceback needed to understand them)."""

from __future__ import annotations


class GeolocsftError(Exception):
    """Base class for problems with the user's input or configuration.

    The message always names the file (and row or image, where there is one) and what is wrong.
    Scripts and the CLI print it without a traceback and exit with status 1.
    """


class InputTableError(GeolocsftError):
    """A metadata or prediction table is missing, unreadable or has unusable columns or rows."""


class BadImageError(GeolocsftError):
    """An image file is missing, does not decode, or cannot be used."""
