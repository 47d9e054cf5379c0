"""Producers: decide what to queue. Pure rules in ``rules.py``; I/O in ``boefjes.py``."""
