"""The ports ``kat-scheduler run`` hands its children before they listen."""

from __future__ import annotations

import random
import socket

from kat_scheduler.run.embedded import LOWEST_PICK, ephemeral_start, free_port, free_ports


def test_ports_for_the_runs_children_are_never_ones_an_outgoing_connection_can_be_given() -> None:
    # Between the pick and the child's bind, connections the run opens take ports from the
    # ephemeral range; a port below it cannot be taken that way.
    for _ in range(20):
        for port in free_ports(4):
            assert LOWEST_PICK <= port < ephemeral_start()


def test_one_pick_never_hands_out_the_same_port_twice_nor_one_already_handed_out() -> None:
    for _ in range(50):
        first = free_port()
        ports = free_ports(6, avoid=[first])
        assert len(set(ports)) == 6
        assert first not in ports


def test_a_port_something_listens_on_is_passed_over_and_each_picked_one_can_be_listened_on(monkeypatch) -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        taken = listener.getsockname()[1]
        others = free_ports(2, avoid=[taken])
        draws = iter([taken, taken, others[0], taken, others[1]])
        monkeypatch.setattr(random, "randrange", lambda low, high: next(draws))  # what free_ports draws with
        assert free_ports(2) == others
        for port in others:
            with socket.socket() as child:
                child.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                child.bind(("127.0.0.1", port))
                child.listen()
