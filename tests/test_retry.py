"""search/retry.py: the one retry-after-failure rule (the runtime's load and the live index's)."""

import pytest

from search.errors import StorageError
from search.retry import RetryGate


def test_a_recent_failure_is_raised_again_without_new_work():
    gate = RetryGate(3600)
    gate.check()  # nothing failed yet
    error = StorageError("down", uri="s3://b/i/")
    gate.failed(error)
    with pytest.raises(StorageError) as caught:
        gate.check()
    assert caught.value is error and gate.error is error
    gate.succeeded()
    gate.check()
    assert gate.error is None


def test_after_the_wait_the_work_is_tried_again():
    gate = RetryGate(0)
    gate.failed(StorageError("down"))
    gate.check()  # 0 s: already past, so the caller tries again
    assert not gate.recent()


def test_an_error_set_without_a_failure_time_does_not_block():
    gate = RetryGate(3600)
    gate.error = StorageError("a refresh failed; the loaded version still serves")
    gate.check()
