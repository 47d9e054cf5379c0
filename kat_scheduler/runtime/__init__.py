"""What every scheduler process runs on.

* :mod:`~kat_scheduler.runtime.celery_app`: the Celery application (``celery -A kat_scheduler``);
* :mod:`~kat_scheduler.runtime.celery_config`: Celery's settings, built from our Settings;
* :mod:`~kat_scheduler.runtime.beat`: the beat scheduler that ticks only while it holds the lease;
* :mod:`~kat_scheduler.runtime.resources`: per-process resources (engine, clients, publisher),
  created on first use and reset after a fork;
* :mod:`~kat_scheduler.runtime.collector`: tuning Python's garbage collector once a process started;
* :mod:`~kat_scheduler.runtime.heartbeat`: the liveness file long-running loops touch.
"""
