"""Which pairs are candidates and how events translate into them: ``candidates.py`` (pure: pairs,
top-k, interleaving), ``reactions.py`` (pure rules for events), ``explain.py`` (``plan --dry-run``
output) and ``boefjes.py`` (``BoefjePlanner``, the transitional facade over :mod:`kat_scheduler.producers`)."""
