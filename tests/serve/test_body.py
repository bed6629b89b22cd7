import io

import numpy as np
import pytest

from hamjax.serve.body import Refusal, parse_inputs


def _refused(body, content_type="application/json"):
    with pytest.raises(Refusal) as info:
        parse_inputs(body, content_type)
    return info.value


def test_json_and_npy_give_the_same_array():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    buf = io.BytesIO()
    np.save(buf, x)
    from_npy, fields = parse_inputs(buf.getvalue(), "application/x-npy; charset=binary")
    assert fields == {} and from_npy.dtype == np.float32 and from_npy.tolist() == x.tolist()
    from_json, fields = parse_inputs(b'{"inputs": [[0, 1, 2], [3, 4, 5]], "variant": "b"}', "")
    assert from_json.tolist() == x.tolist() and fields["variant"] == "b"


def test_an_npz_archive_is_not_one_array():
    buf = io.BytesIO()
    np.savez(buf, x=np.ones(2))
    err = _refused(buf.getvalue(), "application/octet-stream")
    assert (err.status, err.reason) == (422, "npy") and ".npz archive" in err.detail


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"{", "json"), (b"[1]", "json"), (b'{"inputs": [[1], [1, 2]]}', "shape"), (b'{"inputs": null}', "dtype")],
)
def test_json_refusals_carry_a_reason(body, reason):
    err = _refused(body)
    assert (err.status, err.reason) == (422, reason)
