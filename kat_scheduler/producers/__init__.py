"""Producers: what decides, on its own, to queue boefje work (the tick, due schedules, manual push)."""
