"""Storage: the task and schedule record (SQLAlchemy 2; PostgreSQL in production, SQLite embedded)."""

from kat_scheduler.storage.db import make_engine, session_factory
from kat_scheduler.storage.schedules import ScheduleStore
from kat_scheduler.storage.tables import Base, BeatLease, ScheduleRow, TaskRow, UnpublishedTask
from kat_scheduler.storage.tasks import ClaimedTask, NewTask, TaskStore

__all__ = [
    "Base",
    "BeatLease",
    "ClaimedTask",
    "NewTask",
    "ScheduleRow",
    "ScheduleStore",
    "TaskRow",
    "TaskStore",
    "UnpublishedTask",
    "make_engine",
    "session_factory",
]
