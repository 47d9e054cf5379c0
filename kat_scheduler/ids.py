"""Random ids for tasks and messages, from the standard library, under the names callers import.

``uuid4`` is :func:`uuid.uuid4`; ``token_hex`` is :func:`secrets.token_hex` with 16 bytes by
default (a message's delivery tag). This module only keeps the import path callers use.
"""

from __future__ import annotations

import secrets
from uuid import uuid4

__all__ = ["token_hex", "uuid4"]


def token_hex(nbytes: int = 16) -> str:
    """``nbytes`` random bytes as hex: :func:`secrets.token_hex`."""
    return secrets.token_hex(nbytes)
