"""The Celery tasks (what Flower lists), kept thin: ``scheduler.py`` (the beat-ticked producers and the
reaper), ``workers.py`` (``kat.boefje.run``, ``kat.normalizer.run``). Each calls into producers/ or
workers/ code that has no Celery in it. Not to be confused with the task rows (storage/tasks.py)."""
