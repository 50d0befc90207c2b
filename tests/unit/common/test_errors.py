import pickle

import pytest

from tuneforge.common import errors as e


@pytest.mark.parametrize("cls", [e.InvalidInput, e.NotFound, e.AlreadyExists, e.FailedPrecondition, e.Aborted,
                                 e.ResourceExhausted, e.Unavailable, e.Unauthenticated, e.PermissionDenied,
                                 e.IntegrityError, e.Cancelled, e.DeadlineExceeded, e.Unimplemented, e.Internal])
def test_errors_pickle_with_violations_and_reason(cls):
    err = cls("bad thing: do X", violations=[e.FieldViolation("a.b", "must be > 0")], reason="WHY")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert back.message == "bad thing: do X"
    assert back.violations == (e.FieldViolation("a.b", "must be > 0"),)
    assert back.reason == "WHY"
    assert back.family is cls.family
    assert back.field == "a.b"


def test_invalid_input_of_lists_every_violation():
    err = e.InvalidInput.of([e.FieldViolation("x", "bad"), e.FieldViolation("y", "worse")], what="spec")
    assert err.message == "invalid spec: 2 problems"
    assert "x: bad" in str(err) and "y: worse" in str(err)


def test_every_family_has_a_distinct_grpc_code():
    codes = [f.value for f in e.ErrorFamily]
    assert len(codes) == len(set(codes))
