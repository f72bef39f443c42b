"""Settings (search/settings.py): a bad value is one line naming the variable, in words."""

import pytest

from search.errors import ConfigError
from search.settings import Settings


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SEARCH_MAX_K": "abc"}, "SEARCH_MAX_K='abc': must be a whole number"),
        ({"SEARCH_MAX_K": "2.5"}, "SEARCH_MAX_K='2.5': must be a whole number"),
        ({"SEARCH_THREADS": "many"}, "SEARCH_THREADS='many': must be from 1 to 64 or 'auto'"),
        ({"SEARCH_THREADS": "100000"}, "SEARCH_THREADS='100000': must be from 1 to 64 or 'auto'"),
        ({"SEARCH_HYBRID_SENTENCE_SHARE": "half"}, "SEARCH_HYBRID_SENTENCE_SHARE='half': must be between 0 and 1"),
    ],
)
def test_a_value_that_is_not_a_number_says_what_is_expected(env, message):
    """Not Python's "invalid literal for int() with base 10"."""
    with pytest.raises(ConfigError) as err:
        Settings.resolve(env=env)
    assert str(err.value) == message


def test_a_long_bad_value_is_not_echoed_whole():
    with pytest.raises(ConfigError) as err:
        Settings.resolve(env={"SEARCH_MAX_K": "9" * 50 + "x" * 5000})
    assert len(str(err.value)) < 120 and str(err.value).endswith(": must be a whole number")
