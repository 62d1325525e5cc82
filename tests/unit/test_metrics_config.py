"""``metrics:``: off when absent, loopback by default, host:port checked with its key path."""

from __future__ import annotations

import pytest

from tests.helpers import load
from uploader_daemon.errors import ConfigError

BASE = """
state_dir: /tmp/state
{metrics}
targets:
  - name: reports
    folder: /tmp
    after_upload: {{action: keep}}
    failed_dir: /tmp/failed
    api: {{base_url: "https://api.example.test"}}
    auth: {{type: none}}
    upload: {{type: multipart, path: /api/envio}}
"""


def test_metrics_are_off_without_the_key_and_on_loopback_with_an_empty_one() -> None:
    """No `metrics:`: nothing listens; `metrics: {}`: 127.0.0.1:9464."""
    assert load(BASE, metrics="").metrics is None
    settings = load(BASE, metrics="metrics: {}").metrics
    assert settings is not None
    assert ("127.0.0.1", 9464) == (settings.host, settings.port)


def test_an_ipv6_address_is_written_in_brackets() -> None:
    """`[::1]:9464` listens on ::1."""
    settings = load(BASE, metrics='metrics: {listen: "[::1]:9464"}').metrics
    assert settings is not None
    assert ("::1", 9464) == (settings.host, settings.port)


@pytest.mark.parametrize("listen", ["9464", "localhost:", "127.0.0.1:99999", ":9464"])
def test_a_listen_value_that_is_not_host_and_port_is_refused_with_its_key(listen: str) -> None:
    """The problem names metrics.listen and shows the expected form."""
    with pytest.raises(ConfigError) as refused:
        load(BASE, metrics=f'metrics: {{listen: "{listen}"}}')

    [problem] = refused.value.problems
    assert problem.startswith("metrics.listen: ")
    assert "127.0.0.1:9464" in problem
