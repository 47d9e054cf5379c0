"""Which pairs are candidates and how events translate into them: ``candidates.py`` (pure: pairs,
top-k, interleaving), ``reactions.py`` (pure rules for events), and ``dry_run.py`` (``plan --dry-run``
output). The producers that use them are :mod:`kat_scheduler.producers`'."""
