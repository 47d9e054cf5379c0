"""Running boefjes and normalizers: runners (how), lifecycle (the task row around a run)."""
