"""kat_scheduler: OpenKAT's scan scheduler as a Celery-based distributed task dispatcher.

``celery -A kat_scheduler`` finds the Celery app through :func:`__getattr__`, so importing the
package (for models, rankers, the simulation) does not import Celery.
"""

from typing import Any

from kat_scheduler.version import __version__

__all__ = ["__version__", "app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from kat_scheduler.runtime.celery_app import app

        return app
    raise AttributeError(f"module 'kat_scheduler' has no attribute {name!r}")
