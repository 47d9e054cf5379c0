"""Celery tasks. Kept thin: each one calls into planning/ or workers/ code that has no Celery in it."""
