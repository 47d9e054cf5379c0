"""RabbitMQ vhosts of their own for event tests, so concurrent runs never share queues."""

from __future__ import annotations

import subprocess

from tests.integration.test_event_consumer import with_vhost


def own_vhost(base_url: str, vhost: str) -> str:
    """``base_url`` on ``vhost``, created (with guest's permissions) if rabbitmqctl can; else as it is."""
    if not base_url.rstrip("/").endswith("kat_test_events"):
        return base_url  # the events fixture fell back to '/': no rabbitmqctl here
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True, timeout=30)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], capture_output=True, timeout=30
    )
    return with_vhost(base_url, vhost)
