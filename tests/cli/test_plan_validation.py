"""``daqbridge run``'s words are judged by bluesky-queueserver with the lab's allow-lists, and
moves by ``bluesky.simulators.check_limits``: the same verdicts as the lab's queue server and as
bluesky, in the lab's words.

The allow-lists come from the lab's own code (``daqbridge.cli._lab.allow_lists``: the worker's
plans, the permissions file ``lab up`` gives the RE Manager); each verdict is compared with
bluesky-queueserver's ``validate_plan`` called directly on the same lists. In-process, with
ophyd's simulated devices, and the ESP300 simulator on a pty for the limits.
"""

from __future__ import annotations

import bluesky.plans as bp
import bluesky.simulators
import pytest
from bluesky import RunEngine
from bluesky.simulators import check_limits
from bluesky_queueserver.manager.profile_ops import prepare_plan, validate_plan
from ophyd.sim import det, det1, det2, motor, motor1, motor2

from daqbridge.catalog import DATA_ENV
from daqbridge.cli import _lab, main
from daqbridge.cli._plan_args import UnknownDevice, build_plan_call, resolve_plan
from daqbridge.devices.esp300 import ESP300Controller
from daqbridge.errors import PlanArgumentError
from daqbridge.sim import serve_pty
from daqbridge.transport import SerialPortPool

DEVICES = {"det": det, "det1": det1, "det2": det2, "motor": motor, "motor1": motor1}


def queue_server_lists(plan: str, devices=DEVICES) -> _lab.AllowLists:
    """The lists the lab's RE Manager would hold for ``plan`` and ``devices``."""
    return _lab.allow_lists({plan: _lab.lab_plans()[plan], **devices})


def queue_server_verdict(plan: str, args: list, kwargs: dict, devices=DEVICES) -> bool:
    """bluesky-queueserver's own ``validate_plan`` on the call as a client submits it."""
    lists = queue_server_lists(plan, devices)
    item = {"name": plan, "args": args, "kwargs": kwargs, "user_group": _lab.QUEUE_USER_GROUP}
    ok, _ = validate_plan(item, allowed_plans=lists.plans, allowed_devices=lists.devices)
    return ok


def daqbridge_verdict(plan: str, words: list[str], detectors=()) -> bool:
    try:
        build_plan_call(resolve_plan(plan), words, DEVICES, detectors=detectors)
    except PlanArgumentError:
        return False
    return True


@pytest.mark.parametrize(
    ("plan", "words", "detectors", "args", "kwargs"),
    [
        ("count", ["det", "num=3"], (), [["det"]], {"num": 3}),
        ("count", ["det", "num=2.5"], (), [["det"]], {"num": 2.5}),
        ("count", ["det", "num=three"], (), [["det"]], {"num": "three"}),
        ("count", ["det", "1", "2", "3"], (), [["det"], 1, 2, 3], {}),
        ("log_scan", ["motor", "1", "10", "5"], ["det"], [["det"], "motor", 1, 10, 5], {}),
        ("log_scan", ["motor", "one", "10", "5"], ["det"], [["det"], "motor", "one", 10, 5], {}),
        ("log_scan", ["motor", "1", "10", "5.5"], ["det"], [["det"], "motor", 1, 10, 5.5], {}),
        ("log_scan", ["motor", "1", "10"], ["det"], [["det"], "motor", 1, 10], {}),
        ("exposure_series", ["det", "1,2"], (), ["det", [1, 2]], {}),
        (
            "exposure_series",
            ["det", "1,2", "frames_per_exposure=1.5"],
            (),
            ["det", [1, 2]],
            {"frames_per_exposure": 1.5},
        ),
        ("polarization_scan", ["motor", "det", "0,45"], (), ["motor", "det", [0, 45]], {}),
        ("polarization_scan", ["motor", "det", "abc"], (), ["motor", "det", "abc"], {}),
        ("scan", ["motor", "-1", "1", "3"], ["det"], [["det"], "motor", -1, 1], {"num": 3}),
        ("scan", ["motor", "-1", "1", "2.5"], ["det"], [["det"], "motor", -1, 1], {"num": 2.5}),
    ],
)
def test_the_verdict_is_the_queue_servers(plan, words, detectors, args, kwargs):
    """Every call the lab's queue server would refuse, ``daqbridge run`` refuses, and every call
    it would take, ``daqbridge run`` takes (these are inside daqbridge's own bounds)."""
    assert daqbridge_verdict(plan, words, detectors) == queue_server_verdict(plan, args, kwargs)


def test_a_refusal_names_the_argument_the_queue_server_refused():
    assert not queue_server_verdict("log_scan", [["det"], "motor", "one", 10, 5], {})
    with pytest.raises(PlanArgumentError) as info:
        build_plan_call(
            resolve_plan("log_scan"), ["motor", "one", "10", "5"], DEVICES, detectors=["det"]
        )
    text = str(info.value)
    assert "argument 2 (start): expected a number, got 'one'." in text
    assert "no device" not in text and "Fix:" in text
    assert not queue_server_verdict("polarization_scan", ["motor", "det", "abc"], {})
    with pytest.raises(PlanArgumentError) as info:
        build_plan_call(resolve_plan("polarization_scan"), ["motor", "det", "abc"], DEVICES)
    assert "argument 3 (angles): expected a list of numbers, got 'abc'." in str(info.value)
    assert not queue_server_verdict("count", [["det"]], {"num": 2.5})
    with pytest.raises(PlanArgumentError, match=r"num must be a whole number, got 2\.5"):
        build_plan_call(resolve_plan("count"), ["det", "num=2.5"], DEVICES)


def test_list_scan_is_the_one_deliberate_difference():
    """bluesky before 1.16 annotates list_scan's ``*args`` as (MOTOR, POINTS) tuples while the
    plan takes them flat: the queue server refuses every list_scan written the way bluesky runs
    it. bluesky 1.16 annotates them flat, and the queue server agrees. daqbridge checks those
    groups itself (and the call runs) with either; this pins which bluesky fixed it."""
    import bluesky

    fixed = tuple(int(part) for part in bluesky.__version__.split(".")[:2]) >= (1, 16)
    assert queue_server_verdict("list_scan", [["det"], "motor", [0, 1]], {}) is fixed
    assert daqbridge_verdict("list_scan", ["motor", "0,1"], ["det"])


def test_a_device_not_in_the_allow_list_is_refused(monkeypatch):
    """The permissions decide: with the lab's permissions narrowed to some devices, a device
    the namespace has but the list does not allow is refused by name, where the queue server's
    own substitution would hand the plan the bare string."""
    narrowed = {
        "user_groups": {
            "root": {"allowed_plans": [None], "allowed_devices": [None]},
            _lab.QUEUE_USER_GROUP: {
                "allowed_plans": [":.*"],
                "allowed_devices": ["det", "motor1"],
                "forbidden_devices": [None],
            },
        }
    }
    monkeypatch.setattr(_lab, "_permissions", lambda: narrowed)
    devices = {**DEVICES, "motor2": motor2}
    lists = queue_server_lists("scan", devices)
    assert set(lists.devices) == {"det", "motor1"}

    item = {
        "name": "scan",
        "args": [["det"], "motor2", 0, 1],
        "kwargs": {"num": 3},
        "user_group": _lab.QUEUE_USER_GROUP,
    }
    group = {_lab.QUEUE_USER_GROUP: lists.plans}, {_lab.QUEUE_USER_GROUP: lists.devices}
    prepared = prepare_plan(
        item,
        plans_in_nspace=lists.plans_in_nspace,
        devices_in_nspace=lists.devices_in_nspace,
        allowed_plans=group[0],
        allowed_devices=group[1],
    )
    assert prepared["args"][1] == "motor2"  # the queue server passes it on as text

    spec = resolve_plan("scan")
    with pytest.raises(UnknownDevice) as info:
        build_plan_call(spec, ["motor2", "0", "1", "3"], devices, detectors=["det"])
    text = str(info.value)
    assert "no device 'motor2' in this lab" in text and "Devices: det, motor1." in text
    with pytest.raises(UnknownDevice, match="--detector: no device 'det1'"):
        build_plan_call(spec, ["motor1", "0", "1", "3"], devices, detectors=["det1"])
    call = build_plan_call(spec, ["motor1", "0", "1", "3"], devices, detectors=["det"])
    assert call.args == ([det], motor1, 0, 1)  # the allowed ones become the devices


@pytest.fixture
def esp300_axis():
    """(simulator, axis): a native ESP300 axis with soft limits -25..25 on the simulator."""
    pool = SerialPortPool()
    with serve_pty("esp300", speed=50.0) as server:
        port = pool.open(server.path, baudrate=19200)
        axes = {"x": {"number": 1, "units": "mm", "low_limit": -25, "high_limit": 25}}
        controller = ESP300Controller(port, name="stage", axes=axes, timeout=0.5)
        try:
            yield server.simulator, controller.x
        finally:
            controller.close()
            pool.close_all()


def test_a_position_past_the_limits_is_refused_by_check_limits_before_anything_is_sent(
    esp300_axis, monkeypatch
):
    simulator, axis = esp300_axis
    RunEngine({}, context_managers=[])  # its event loop is where check_limits runs
    walked = []
    real = bluesky.simulators.check_limits_async

    async def spy(plan):
        walked.append(plan)
        return await real(plan)

    monkeypatch.setattr(bluesky.simulators, "check_limits_async", spy)
    devices = {"det": det, "stage_x": axis}
    sent_before = list(simulator.received_lines)
    position = simulator.axis_position(1)

    with pytest.raises(PlanArgumentError) as info:
        build_plan_call(
            resolve_plan("scan"), ["stage_x", "-5", "50", "3"], devices, detectors=["det"]
        )
    text = str(info.value)
    assert "scan(): stage_x cannot go to 50" in text, text
    assert "25" in text  # the limit
    assert len(walked) == 1  # bluesky's check_limits said so, not a check of daqbridge's own

    # bluesky's own check on the same plan agrees, and neither sent the controller anything
    with pytest.raises(Exception, match="stage_x"):
        check_limits(bp.scan([det], axis, -5, 50, 3))
    assert simulator.received_lines == sent_before
    assert not [line for line in simulator.received_lines if "PA" in line or "PR" in line]
    assert simulator.axis_position(1) == position

    # inside the limits: accepted, still nothing sent until the RunEngine runs it
    build_plan_call(resolve_plan("scan"), ["stage_x", "-5", "5", "3"], devices, detectors=["det"])
    assert simulator.received_lines == sent_before


def test_num_expected_a_whole_number_still_holds(capsys, monkeypatch, tmp_path):
    """The queue server refuses the word; ``daqbridge run`` says what it should have been."""
    assert not queue_server_verdict("count", [["det"]], {"num": "three"})
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    for argv in (
        ["scan", "sim_stage_x", "-5", "5", "three", "--detector", "sim_meter"],
        ["count", "sim_meter", "num=three"],
    ):
        code = main(["run", *argv])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "num: expected a whole number, got 'three'" in err
        assert "no device" not in err
    assert not (tmp_path / "data").exists()  # refused before the lab started
