"""Two drivers on one bus address (shadow mode): a transaction's reply is its own.

In shadow the legacy Elliptec driver and the native mount share the inbox of each address. A
reply sitting in that inbox, about to be taken by one driver's transaction, must survive the
other driver emptying stale packets (``discard``, as the native connect did) or waiting for a
move's end (``wait_for``, which takes any PO). Either theft made the transaction time out: the
"no PO packet from address 2 ... after b'2gp'" start-up failure of issue 18.

The test plays the device and holds the port's lease, so the reply is in the inbox while the
transaction still waits to write its request: no timing decides the order.
"""

from __future__ import annotations

import threading
import time

import pytest

from daqbridge.errors import InstrumentTimeout

REPLY = b"2PO00001000"


def _wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@pytest.fixture
def reply_waiting(pool, make_peer, elliptec_router, host_splitter):
    """A transaction ``2gp`` of "legacy" in flight, its reply already in the inbox of address 2,
    while the test holds the port's lease (so the transaction cannot have taken it yet)."""
    peer = make_peer(lambda line: None, splitter=host_splitter)  # the test answers
    port = pool.open(peer.path)
    endpoint = port.bus(elliptec_router).endpoint("2")
    outcome: dict[str, object] = {}

    def legacy_poll() -> None:
        try:
            outcome["reply"] = endpoint.transact(b"2gp", expect="PO", timeout=5.0, owner="legacy")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            outcome["error"] = exc

    lease = port.lease("test plays the line", 5.0)
    lease.__enter__()
    thread = threading.Thread(target=legacy_poll)
    thread.start()
    assert _wait_until(lambda: "legacy" in port.stats()["waiters"])
    peer.send(REPLY + b"\r\n")
    assert _wait_until(lambda: endpoint.received == 1)

    def release() -> dict[str, object]:
        lease.__exit__(None, None, None)
        thread.join(15.0)
        assert not thread.is_alive()
        return outcome

    yield endpoint, release
    if thread.is_alive():
        release()


def test_a_discard_by_the_other_driver_leaves_the_reply_of_a_transaction(reply_waiting):
    endpoint, release = reply_waiting
    assert endpoint.discard() == []
    assert release() == {"reply": REPLY}


def test_a_wait_for_by_the_other_driver_does_not_take_the_reply_of_a_transaction(reply_waiting):
    endpoint, release = reply_waiting
    with pytest.raises(InstrumentTimeout):
        endpoint.wait_for("PO", timeout=0.2)
    assert release() == {"reply": REPLY}
