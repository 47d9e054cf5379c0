"""``kat-scheduler run``: every process of the scheduler under one supervisor, with a live view.

- :mod:`~kat_scheduler.run.plan`: which children, with what environment (pure);
- :mod:`~kat_scheduler.run.embedded`: the private Redis of the embedded run;
- :mod:`~kat_scheduler.run.supervisor`: start, watch, restart and stop children;
- :mod:`~kat_scheduler.run.monitor` and :mod:`~kat_scheduler.run.view`: what the terminal shows;
- :mod:`~kat_scheduler.run.command`: the click command tying them together.
"""
