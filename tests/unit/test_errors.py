"""The error hierarchy, stored error info, and what error messages say."""

from __future__ import annotations

import inspect
import pickle

import pytest

from perdure.core import errors
from perdure.core.errors import (
    ErrorInfo,
    InputValidationError,
    InvalidOptionError,
    NonDeterminismError,
    NonRetryableError,
    OutputValidationError,
    PerdureError,
    RateLimitedError,
    RetryableError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    RunTimedOutError,
    SyncInAsyncError,
)

PUBLIC_ERRORS = [
    obj
    for name, obj in vars(errors).items()
    if inspect.isclass(obj) and issubclass(obj, BaseException) and not name.startswith("_")
]

DESIGN_ERRORS = {
    "PerdureError",
    "RetryableError",
    "NonRetryableError",
    "RunCancelledError",
    "RunFailedError",
    "RunTimedOutError",
    "RunNotFoundError",
    "InputValidationError",
    "NonDeterminismError",
    "BackpressureError",
    "RateLimitedError",
    "StorageError",
}


def test_every_error_named_in_design_exists() -> None:
    assert {cls.__name__ for cls in PUBLIC_ERRORS} >= DESIGN_ERRORS


@pytest.mark.parametrize("cls", PUBLIC_ERRORS, ids=lambda c: c.__name__)
def test_every_public_error_derives_from_perdure_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, PerdureError)


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (OutputValidationError, NonRetryableError),
        (NonDeterminismError, NonRetryableError),
        (RunTimedOutError, RunFailedError),
        (RunCancelledError, RunFailedError),
        (InvalidOptionError, ValueError),
        (InputValidationError, ValueError),
        (RunNotFoundError, LookupError),
        (SyncInAsyncError, RuntimeError),
    ],
)
def test_error_bases(cls: type[Exception], base: type[Exception]) -> None:
    assert issubclass(cls, base)


def _raise_and_catch(exc: Exception) -> Exception:
    def inner() -> None:
        raise exc

    try:
        inner()
    except Exception as caught:
        return caught
    raise AssertionError("not raised")


def test_from_exception_keeps_type_message_and_traceback() -> None:
    exc = _raise_and_catch(KeyError("missing-key"))
    info = ErrorInfo.from_exception(exc)
    assert info.type == "KeyError"
    assert info.message == "'missing-key'"
    assert info.retryable is True
    assert info.traceback is not None
    assert "Traceback (most recent call last)" in info.traceback
    assert "in inner" in info.traceback
    assert info.traceback.rstrip().endswith("KeyError: 'missing-key'")


def test_from_exception_of_an_unraised_exception_has_no_frames() -> None:
    info = ErrorInfo.from_exception(ValueError("bad"))
    assert (info.type, info.message, info.retryable) == ("ValueError", "bad", True)
    assert info.traceback == "ValueError: bad\n"


def test_from_exception_includes_the_cause() -> None:
    try:
        try:
            raise OSError("disk gone")
        except OSError as cause:
            raise RuntimeError("write failed") from cause
    except RuntimeError as exc:
        info = ErrorInfo.from_exception(exc)
    assert info.traceback is not None
    assert "OSError: disk gone" in info.traceback
    assert "RuntimeError: write failed" in info.traceback


class PaymentDeclined(NonRetryableError):
    pass


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (NonRetryableError("stop"), False),
        (PaymentDeclined("card"), False),
        (OutputValidationError("bad output"), False),
        (NonDeterminismError("step mismatch"), False),
        (RetryableError("again"), True),
        (ValueError("v"), True),
        (RuntimeError("r"), True),
        (RunFailedError("child failed"), True),
    ],
)
def test_from_exception_retryable_flag(exc: Exception, retryable: bool) -> None:
    info = ErrorInfo.from_exception(exc)
    assert info.retryable is retryable
    assert info.type == type(exc).__name__


def test_from_exception_retryable_override() -> None:
    assert ErrorInfo.from_exception(ValueError("x"), retryable=False).retryable is False
    assert ErrorInfo.from_exception(NonRetryableError("x"), retryable=True).retryable is True


def test_error_info_json_round_trip() -> None:
    info = ErrorInfo.from_exception(_raise_and_catch(PaymentDeclined("card 4242 declined")))
    data = info.to_json()
    assert data == {
        "type": "PaymentDeclined",
        "message": "card 4242 declined",
        "retryable": False,
        "traceback": info.traceback,
    }
    assert ErrorInfo.from_json(data) == info


def test_error_info_from_partial_json_uses_defaults() -> None:
    assert ErrorInfo.from_json({}) == ErrorInfo(type="Error", message="", retryable=True)
    assert ErrorInfo.from_json({"type": "X", "message": 5}).message == "5"


def test_error_info_is_frozen() -> None:
    info = ErrorInfo(type="X", message="m")
    with pytest.raises(AttributeError):
        info.message = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "async_form"),
    [
        ("trigger_sync", "await trigger(...)"),
        ("result_sync", "await result(...)"),
        ("batch_trigger_and_wait_sync", "await batch_trigger_and_wait(...)"),
    ],
)
def test_sync_in_async_error_names_the_async_form(name: str, async_form: str) -> None:
    message = str(SyncInAsyncError(name))
    assert message.startswith(f"{name}() blocks")
    assert "running event loop" in message
    assert async_form in message


def test_invalid_option_error_names_option_value_and_allowed() -> None:
    err = InvalidOptionError("concurrency", "an integer >= 1", -4)
    assert (err.option, err.allowed, err.got) == ("concurrency", "an integer >= 1", -4)
    assert str(err) == "invalid value for 'concurrency': -4; expected an integer >= 1"


def test_run_not_found_names_the_run() -> None:
    err = RunNotFoundError("run_abc")
    assert err.run_id == "run_abc"
    assert str(err) == "run 'run_abc' not found"


def test_run_failed_error_carries_run_and_error() -> None:
    info = ErrorInfo(type="ValueError", message="boom", retryable=False)
    err = RunFailedError("run 'run_1' failed: boom", run={"id": "run_1"}, error=info)
    assert err.error is info
    assert err.run == {"id": "run_1"}
    assert str(RunCancelledError()) == "run cancelled"


def test_input_validation_error_defaults() -> None:
    err = InputValidationError("bad")
    assert err.errors == []
    assert err.task_id is None


@pytest.mark.parametrize(
    "exc",
    [
        InvalidOptionError("lease", "a duration > 0", 0),
        SyncInAsyncError("trigger_sync"),
        RateLimitedError("rate limit of 'api' exhausted", retry_after=1.5),
        RunNotFoundError("run_x"),
        InputValidationError("bad input", task_id="t", errors=[{"field": "input.x"}]),
        RunFailedError("failed", error=ErrorInfo(type="E", message="m")),
        RunCancelledError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_survive_pickling(exc: PerdureError) -> None:
    # Errors cross process boundaries (multiprocessing, executors) as pickles.
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert vars(back) == vars(exc)
