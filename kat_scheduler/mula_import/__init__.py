"""``kat-scheduler import-mula``: carry schedules and run history over from mula, KAT's scheduler.

An operator moving from mula must keep two things, or the first ticks would rescan everything:

* **Schedules** (mula's ``schedules`` table): boefje schedules become our ``schedules`` rows with
  the same id, our hash, enabled or not, the cron ``schedule`` and mula's ``deadline_at``.
* **History** (mula's ``tasks`` table): the newest *finished* (completed or failed) boefje and
  normalizer task per hash becomes a finished row of our ``tasks`` table with the same id, its
  status, ``created_at`` and ``ended_at`` = mula's ``modified_at`` (mula stamps ``modified_at``
  when a task ends and measures its own grace period from it). :meth:`TaskStore.last_runs`, the
  planner's and the event handlers' grace look-up, only asks for the newest run of a hash, so
  older runs of the same hash are counted as *superseded* and left behind: that keeps an import
  of years of history to one row per (boefje, object, organisation).

What is not carried over, and why (each counted in the summary):

* tasks that were pending, queued, dispatched or running in mula: there is no Celery message for
  them, so a row would sit live for ever and block its hash; the planner finds that work again;
* cancelled tasks (not a run: no grace), report tasks and schedules and normalizer schedules
  (kat_scheduler plans boefjes and normalizers only, and normalizers are never scheduled);
* finished tasks that ended before ``--since`` (by default the retention horizon,
  ``SCHEDULER_RETENTION_DAYS`` ago: the reaper would prune older rows at once);
* malformed rows (data that is not the JSON object mula writes, an invalid cron expression) and
  rows of an unknown scheduler: each is logged with its id and skipped, never fatal.

Mula schemas read (PostgreSQL; see ``docs/migrating-from-mula.md``):

* **current** (mula's alembic revisions 0008 and later, OpenKAT 1.16 on): ``tasks`` (id,
  scheduler_id, schedule_id, [organisation], type, hash, priority, data JSONB, status, created_at,
  modified_at) and ``schedules`` (id, scheduler_id, [organisation], hash, data, enabled, schedule,
  deadline_at, created_at, modified_at); ``organisation`` arrived with revision 0009/0010.
* **legacy** (revisions 0002 up to 0007): ``tasks`` with the task in ``p_item`` JSON (``hash``,
  ``priority``, ``data``) and ``items``, the live queue; there were no schedules then.

Scheduler ids are ``boefje``/``normalizer``/``report`` in current mula and
``boefje-<org>``/``normalizer-<org>``/``report-<org>`` before it; both are read. Status is mula's
PostgreSQL enum ``taskstatus`` (``COMPLETED``, ``FAILED``, …), compared case-insensitively.

Everything is read in pages of ``--batch-size`` rows (keyset pagination on indexed columns, in
one read-only snapshot of the mula database) and written a page per transaction through
:class:`TaskStore` and :class:`ScheduleStore`, so memory stays bounded however big mula's tables
are. Rows keep their mula ids and inserts leave taken ids (and taken schedule hashes) alone, so
running the import twice imports nothing twice; ``--dry-run`` counts and writes nothing.
"""

from __future__ import annotations

from kat_scheduler.mula_import.command import mula_import_cmd
from kat_scheduler.mula_import.importer import MulaImporter, import_from_mula
from kat_scheduler.mula_import.rows import (
    Identity,
    boefje_identity,
    finished_task,
    identity,
    normalizer_identity,
    schedule_record,
)
from kat_scheduler.mula_import.schema import MulaLayout, inspect_mula, kind_of
from kat_scheduler.mula_import.summary import (
    DISABLED_REASON,
    IMPORT_REASON,
    ImportSummary,
    Malformed,
    MulaSchemaError,
    Outcome,
)

__all__ = [
    "DISABLED_REASON",
    "IMPORT_REASON",
    "Identity",
    "ImportSummary",
    "Malformed",
    "MulaImporter",
    "MulaLayout",
    "MulaSchemaError",
    "Outcome",
    "boefje_identity",
    "finished_task",
    "identity",
    "import_from_mula",
    "inspect_mula",
    "kind_of",
    "mula_import_cmd",
    "normalizer_identity",
    "schedule_record",
]
