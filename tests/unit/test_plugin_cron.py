"""A boefje's cron from Katalogus is one the planner can follow, or the plugin is invalid."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kat_scheduler.models.plugins import Boefje
from tests.factories import BoefjeFactory


@pytest.mark.parametrize("cron", ["0 6 30 2 *", "0 6 31 4,6 *", "not a cron", "61 * * * *"])
def test_a_cron_that_does_not_parse_or_never_comes_makes_the_boefje_invalid(cron: str) -> None:
    plugin = BoefjeFactory.build().model_dump(mode="json") | {"cron": cron}
    with pytest.raises(ValidationError, match="invalid cron expression"):
        Boefje.model_validate(plugin)


@pytest.mark.parametrize("cron", ["0 6 * * *", "0 6 29 2 *", "*/5 * * * *"])
def test_a_cron_that_comes_is_kept(cron: str) -> None:
    plugin = BoefjeFactory.build().model_dump(mode="json") | {"cron": cron}
    assert Boefje.model_validate(plugin).cron == cron
