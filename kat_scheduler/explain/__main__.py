"""``python -m kat_scheduler.explain``: the ``explain`` command on its own."""

from kat_scheduler.explain.command import explain_cmd

if __name__ == "__main__":  # pragma: no cover
    explain_cmd(prog_name="kat-scheduler explain")
