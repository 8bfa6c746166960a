"""Reading plan names and arguments from words: in-process, with ophyd's simulated devices and a
real RunEngine (no lab, no catalog), so every rule is checked in milliseconds."""

from __future__ import annotations

import pytest
from bluesky import RunEngine
from ophyd.positioner import SoftPositioner
from ophyd.sim import det, det1, det2, motor, motor1, motor2

from daqbridge.cli._plan_args import (
    DeviceRef,
    PlanCall,
    UnknownDevice,
    UnknownPlan,
    build_plan_call,
    format_plan_list,
    parse_md,
    parse_value,
    plan_registry,
    resolve_plan,
)
from daqbridge.errors import PlanArgumentError
from daqbridge.plans._checks import (
    MAX_DELAY_S,
    MAX_PLAN_MEMORY_BYTES,
    MAX_POINTS,
    max_points,
    trajectory_bytes,
)
from tests.devices.conftest import stop_run_engine

DEVICES = {
    "det": det,
    "det1": det1,
    "det2": det2,
    "motor": motor,
    "motor1": motor1,
    "motor2": motor2,
}


@pytest.fixture
def RE():  # noqa: N802 - bluesky's name
    engine = RunEngine({}, context_managers=[])
    yield engine
    stop_run_engine(engine)


def collect(RE, plan):  # noqa: N803
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(plan)
    return docs


def events(docs):
    return [doc for name, doc in docs if name == "event"]


# --- single words ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("5", 5),
        ("-5", -5),
        ("+3", 3),
        ("-1.5", -1.5),
        ("2e-3", 0.002),
        (".5", 0.5),
        ("true", True),
        ("False", False),
        ("none", None),
        ("1,2,3", [1, 2, 3]),
        ("5,", [5]),
        ("-1, 0.5, 2", [-1, 0.5, 2]),
        ("[1, 2.5, -3]", [1, 2.5, -3]),
        ("[]", []),
        ('"hello, world"', "hello, world"),
        ("'text'", "text"),
    ],
)
def test_words_become_values_by_fixed_rules(word, expected):
    value = parse_value(word, DEVICES)
    assert value == expected
    assert type(value) is type(expected)


def test_device_ids_become_the_devices_in_words_lists_and_json():
    assert parse_value("motor", DEVICES) is motor
    assert parse_value("det1,det2", DEVICES) == [det1, det2]
    assert parse_value('["det1", "det2"]', DEVICES) == [det1, det2]
    # a declared ophyd component, by its dotted path
    assert parse_value("motor.readback", DEVICES) is motor.readback


def test_unknown_device_names_the_close_ids():
    with pytest.raises(UnknownDevice) as info:
        parse_value("motr1", DEVICES, where="argument 1")
    text = str(info.value)
    assert "motr1" in text and "argument 1" in text
    assert "'motor1'" in text and "Did you mean" in text
    with pytest.raises(UnknownDevice, match="motr"):
        parse_value('["motr"]', DEVICES)


def test_components_are_only_declared_ones_never_arbitrary_attributes():
    with pytest.raises(PlanArgumentError, match="no component '__class__'"):
        parse_value("motor.__class__", DEVICES)
    with pytest.raises(PlanArgumentError, match="no component 'nonexistent'"):
        parse_value("motor.nonexistent", DEVICES)


def test_code_is_never_evaluated(tmp_path):
    mark = tmp_path / "evaluated"
    code = f"__import__('os').system('touch {mark}')"
    for word in (code, f"[{code!r}]", "open('/etc/passwd').read()", "1+1", "lambda: 0", "nan"):
        with pytest.raises(PlanArgumentError) as info:
            parse_value(word, DEVICES)
        assert "Traceback" not in str(info.value)
    assert not mark.exists()
    # declared as str (a field name): kept as the very text, still not run
    spec = resolve_plan("tune_centroid")
    call = build_plan_call(spec, [code, "motor", "-1", "1", "0.1"], DEVICES, detectors=["det"])
    assert call.args[1] == code
    assert not mark.exists()


def test_bad_words_say_what_is_accepted():
    with pytest.raises(PlanArgumentError) as info:
        parse_value("1;2", DEVICES, where="argument 3")
    assert "argument 3" in str(info.value) and "a number" in str(info.value)
    with pytest.raises(PlanArgumentError, match="empty element"):
        parse_value("1,,2", DEVICES)
    with pytest.raises(PlanArgumentError, match="not a valid JSON array"):
        parse_value("[1, 2", DEVICES)
    with pytest.raises(PlanArgumentError, match="only accepted for md"):
        parse_value('{"a": 1}', DEVICES)


def test_run_metadata_items():
    md = parse_md(["sample=A1", "temperature=295.5", "tags=a,b", "ok=true", "note=run 3 left"])
    assert md == {
        "sample": "A1",
        "temperature": 295.5,
        "tags": "a,b",
        "ok": True,
        "note": "run 3 left",
    }
    with pytest.raises(PlanArgumentError, match="KEY=VALUE"):
        parse_md(["no-equals-sign"])


# --- plans ------------------------------------------------------------------------------------


def test_registry_holds_the_allow_list_and_the_labs_plans():
    registry = plan_registry()
    for name in ("count", "scan", "rel_scan", "list_scan", "grid_scan", "log_scan"):
        assert registry[name].source == "bluesky" and registry[name].takes_detectors
    for name in ("wavelength_scan", "polarization_scan", "raster", "exposure_series"):
        assert registry[name].source == "daqbridge" and not registry[name].takes_detectors
    # only plans: no plan stubs, no modules, nothing importable by dotted name
    for name in ("mv", "sleep", "os.system", "bps.mv", "__import__", "eval"):
        with pytest.raises(UnknownPlan):
            resolve_plan(name)


def test_unknown_plan_suggests_the_close_names():
    with pytest.raises(UnknownPlan) as info:
        resolve_plan("scna")
    assert "'scan'" in str(info.value) and "daqbridge run --list" in str(info.value)


def test_plan_listing_shows_the_cli_form_and_the_call_of_every_plan():
    text = format_plan_list()
    for name in plan_registry():
        assert f"  {name} " in text
    assert "scan MOTOR START STOP [MOTOR START STOP ...] NUM --detector DET" in text
    assert "bluesky.plans.scan([DET, ...], MOTOR, START, STOP, ..., num=NUM)" in text
    assert "polarization_scan ROTATOR METER ANGLES" in text


# --- mapping words onto calls, run in a real RunEngine -----------------------------------------


def test_scan_words_map_to_the_detector_first_call(RE):
    spec = resolve_plan("scan")
    call = build_plan_call(spec, ["motor", "-5", "5", "11"], DEVICES, detectors=["det"])
    assert call.args == ([det], motor, -5, 5)
    assert call.kwargs == {"num": 11}
    assert call.describe() == "scan([det], motor, -5, 5, num=11)"
    docs = collect(RE, call.make())
    evs = events(docs)
    assert len(evs) == 11
    assert [e["data"]["motor"] for e in evs] == pytest.approx(list(range(-5, 6)))
    assert "det" in evs[0]["data"]


def test_two_motor_scan_and_the_python_form_with_a_detector_list(RE):
    spec = resolve_plan("scan")
    call = build_plan_call(
        spec, ["det1,det2", "motor1", "0", "1", "motor2", "0", "2", "3"], DEVICES
    )
    assert call.args[0] == [det1, det2]
    evs = events(collect(RE, call.make()))
    assert len(evs) == 3
    assert [e["data"]["motor2"] for e in evs] == pytest.approx([0, 1, 2])


def test_count_takes_its_detectors_as_words(RE):
    spec = resolve_plan("count")
    call = build_plan_call(spec, ["det", "num=3"], DEVICES, md={"sample": "A1"})
    assert call.args[:2] == ([det], 3)
    docs = collect(RE, call.make())
    assert len(events(docs)) == 3
    start = next(doc for name, doc in docs if name == "start")
    assert start["sample"] == "A1" and start["plan_name"] == "count"
    call = build_plan_call(spec, ["det1", "det2", "2"], DEVICES, detectors=["det"])
    assert call.args[:2] == ([det, det1, det2], 2)


def test_grid_and_list_scans(RE):
    grid = build_plan_call(
        resolve_plan("grid_scan"),
        ["motor1", "0", "1", "2", "motor2", "0", "1", "3", "snake_axes=true"],
        DEVICES,
        detectors=["det"],
    )
    assert len(events(collect(RE, grid.make()))) == 6
    lst = build_plan_call(
        resolve_plan("list_scan"), ["motor", "0,0.5,2"], DEVICES, detectors=["det"]
    )
    evs = events(collect(RE, lst.make()))
    assert [e["data"]["motor"] for e in evs] == pytest.approx([0, 0.5, 2])


@pytest.mark.parametrize(
    ("plan", "words", "detectors", "message"),
    [
        ("scan", ["motor", "-5", "5"], ["det"], "MOTOR START STOP per motor and then NUM"),
        ("scan", ["motor", "-5", "5", "2.5"], ["det"], "NUM (number of points) must be a whole"),
        ("scan", ["motor", "-5", "5", "0"], ["det"], "must be at least 1"),
        ("scan", ["motor", "a", "5", "3"], ["det"], "START 1: expected a number, got 'a'"),
        ("scan", ["motor", "-5", "5", "11"], [], "needs at least one detector"),
        ("scan", ["5", "-5", "5", "11"], ["det"], "MOTOR 1 must be a motor"),
        ("scan", ["motor", "true", "5", "11"], ["det"], "START 1 must be a number"),
        ("scan", ["motor", "-5", "5", "11", "nmu=3"], ["det"], "Did you mean 'num'"),
        ("scan", ["motor", "-5", "5", "11", "per_step=x"], ["det"], "no keyword argument"),
        ("list_scan", ["motor1", "1,2", "motor2", "1,2,3"], ["det"], "same number of points"),
        ("list_scan", ["motor1", "5"], ["det"], "must be a list of positions"),
        ("count", ["det", "num=2", "num=3"], [], "given twice"),
        ("count", ["det", "1", "2", "3"], [], "count()"),
        ("log_scan", ["motor", "1", "10", "five"], ["det"], "(num): expected a whole number"),
        ("log_scan", ["motor", "1", "10"], ["det"], "missing a required argument"),
        ("polarization_scan", ["motor", "det", "0,45"], ["det"], "not from --detector"),
    ],
)
def test_bad_calls_are_refused_before_the_plan_runs(plan, words, detectors, message):
    with pytest.raises(PlanArgumentError) as info:
        build_plan_call(resolve_plan(plan), words, DEVICES, detectors=detectors)
    text = str(info.value)
    assert message in text
    assert "Fix:" in text  # every refusal says what to write instead


@pytest.mark.parametrize(
    ("plan", "words", "message"),
    [
        ("scan", ["motor", "-5", "5", "three"], "num: expected a whole number, got 'three'."),
        ("scan", ["motor", "-5", "5", "num=three"], "num: expected a whole number, got 'three'."),
        ("scan", ["det1,det2", "motor", "-5", "5", "three"], "num: expected a whole number"),
        ("scan", ["motor1", "0", "1", "motor2", "-5", "five", "3"], "STOP 2: expected a number"),
        ("count", ["det", "num=three"], "num: expected a whole number, got 'three'."),
        ("count", ["det", "delay=soon"], "delay: expected a number, got 'soon'."),
        ("grid_scan", ["motor", "-5", "5", "three"], "NUM 1: expected a whole number"),
        ("list_scan", ["motor", "abc"], "POINTS 1: expected a list of numbers, got 'abc'."),
        ("log_scan", ["motor", "one", "10", "5"], "argument 2 (start): expected a number"),
    ],
)
def test_a_word_where_the_plan_takes_a_number_says_so(plan, words, message):
    text = refusal(
        plan, words, detectors=[] if "," in words[0] else ["det"]
    )  # [det1,det2] motor ...
    assert message in text
    assert "no device" not in text


@pytest.mark.parametrize(
    ("plan", "words", "unknown", "close"),
    [
        ("scan", ["motr1", "-5", "5", "three"], "motr1", "motor1"),
        ("scan", ["motor", "-5", "5", "3", "motr2"], "motr2", "motor2"),  # no grouping fits
        ("grid_scan", ["motor1", "0", "1", "2", "motr2", "0", "1", "2"], "motr2", "motor2"),
        ("list_scan", ["motr1", "1,2"], "motr1", "motor1"),
    ],
)
def test_a_word_in_a_motor_place_is_still_an_unknown_device(plan, words, unknown, close):
    with pytest.raises(UnknownDevice) as info:
        build_plan_call(resolve_plan(plan), words, DEVICES, detectors=["det"])
    text = str(info.value)
    assert f"no device {unknown!r}" in text and f"Did you mean {close!r}" in text


def test_the_early_check_needs_only_the_profiles_ids():
    refs = {k: DeviceRef(k) for k in ("sim_stage_x", "sim_meter", "sim_rotators_a")}
    call = build_plan_call(
        resolve_plan("scan"), ["sim_stage_x", "-5", "5", "11"], refs, detectors=["sim_meter"]
    )
    assert call.describe() == "scan([sim_meter], sim_stage_x, -5, 5, num=11)"
    with pytest.raises(UnknownDevice, match="sim_stage_x"):
        build_plan_call(resolve_plan("scan"), ["sim_stage_z", "-5", "5", "11"], refs)
    call = build_plan_call(
        resolve_plan("polarization_scan"), ["sim_rotators_a", "sim_meter", "0,45,90"], refs
    )
    assert call.args[2] == [0, 45, 90]
    refs["sim_stage_y"] = DeviceRef("sim_stage_y")
    call = build_plan_call(
        resolve_plan("fly_raster"),
        ["sim_stage_x", "sim_stage_y", "sim_meter", "-1,1,21", "-1,1,21", "velocity=2"],
        refs,
    )
    assert call.args[3:] == ([-1, 1, 21], [-1, 1, 21]) and call.kwargs == {"velocity": 2}


def test_soft_limits_are_checked_with_the_real_devices():
    stage = SoftPositioner(name="stage", limits=(-10, 10), init_pos=0)
    devices = {**DEVICES, "stage": stage}
    spec = resolve_plan("scan")
    build_plan_call(spec, ["stage", "-10", "10", "3"], devices, detectors=["det"])
    with pytest.raises(PlanArgumentError) as info:
        build_plan_call(spec, ["stage", "-5", "50", "3"], devices, detectors=["det"])
    assert "stage cannot go to 50" in str(info.value)
    with pytest.raises(PlanArgumentError, match="cannot go to 11"):
        build_plan_call(
            resolve_plan("rel_scan"), ["stage", "-1", "11", "3"], devices, detectors=["det"]
        )
    with pytest.raises(PlanArgumentError, match="cannot go to -20"):
        build_plan_call(resolve_plan("list_scan"), ["stage", "0,-20"], devices, detectors=["det"])


def test_the_plans_own_checks_run_before_the_run_engine(RE):
    """``make()`` advances the plan to its first message: its argument checks fail there."""
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append(name))
    # exposure_series wants a camera with an exposure; a plain detector has none.
    call = build_plan_call(resolve_plan("exposure_series"), ["det", "1,2"], DEVICES)
    with pytest.raises(PlanArgumentError, match="exposure_series"):
        call.make()
    # bluesky's own argument errors (a ValueError at the first message) become
    # PlanArgumentError too, naming the plan and its usage
    raw = PlanCall(resolve_plan("scan"), ([det], motor, 1, 2), {})
    with pytest.raises(PlanArgumentError) as info:
        raw.make()
    assert "scan() refused its arguments: ValueError" in str(info.value)
    assert "usage: daqbridge run scan MOTOR START STOP" in str(info.value)
    assert docs == []


def test_a_primed_plan_passes_replies_and_exceptions_through(RE):
    """The generator handed to the RunEngine behaves like the plan itself."""
    stage = SoftPositioner(name="stage", limits=(-10, 10), init_pos=0)
    devices = {**DEVICES, "stage": stage}
    call = build_plan_call(
        resolve_plan("rel_scan"), ["stage", "-1", "1", "3"], devices, detectors=["det"]
    )
    evs = events(collect(RE, call.make()))
    assert [e["data"]["stage"] for e in evs] == pytest.approx([-1, 0, 1])
    assert stage.position == pytest.approx(0)  # rel_scan's reset_positions ran: replies got back


# --- bounds (docs/plans.md, "Bounds"): the same limits as the plans, before the lab starts -----


def refusal(plan, words, detectors=(), md=None):
    """The text of the PlanArgumentError that reading ``words`` raises."""
    with pytest.raises(PlanArgumentError) as info:
        build_plan_call(resolve_plan(plan), words, DEVICES, detectors=detectors, md=md)
    return str(info.value)


def test_delays_are_bounded_from_zero_to_a_day(RE):
    day = f"{MAX_DELAY_S:g}"
    for word, shown in (
        ("1e308", "1e+308"),
        ("86400.5", "86400.5"),
        ("-1", "-1"),
        ("-1e-9", "-1e-09"),
    ):
        text = refusal("count", ["det", "2", word])
        assert f"count(): delay={shown} " in text, text
        assert f"(limit: 0 to {day} s)" in text, text
    assert "delay[1]=-0.5" in refusal("count", ["det", "3", "delay=0.1,-0.5"])
    text = refusal("count", ["det", "4", "delay=0.1,0.2"])
    assert "has 2 pauses; 4 points need 3" in text
    # the lab's own plans: settle_time is a pause too, refused from the profile's ids alone
    refs = {k: DeviceRef(k) for k in ("sim_laser", "sim_meter")}
    with pytest.raises(PlanArgumentError, match=r"settle_time=1e\+308 is longer than one day"):
        build_plan_call(
            resolve_plan("wavelength_scan"),
            ["sim_laser", "sim_meter", "750", "760", "2", "settle_time=1e308"],
            refs,
        )
    # the bounds themselves are allowed, and run
    call = build_plan_call(resolve_plan("count"), ["det", "2", "0"], DEVICES)
    assert len(events(collect(RE, call.make()))) == 2
    build_plan_call(resolve_plan("count"), ["det", "2", day], DEVICES)


def test_numbers_of_points_are_bounded_by_memory():
    assert MAX_POINTS == 1_000_000 == max_points(1)
    assert trajectory_bytes(MAX_POINTS, 1) == MAX_PLAN_MEMORY_BYTES
    build_plan_call(resolve_plan("count"), ["det", str(MAX_POINTS)], DEVICES)  # the bound itself
    text = refusal("count", ["det", str(MAX_POINTS + 1)])
    assert "1,000,001 points" in text and "at most 1,000,000 points, 800 MB" in text
    text = refusal("scan", ["motor", "0", "1", "1e9"], ["det"])
    assert "1,000,000,000 points" in text and "800 GB" in text
    # two motors hold two positions per point: half as many points
    two = max_points(2)
    build_plan_call(
        resolve_plan("scan"),
        ["motor1", "0", "1", "motor2", "0", "1", str(two)],
        DEVICES,
        detectors=["det"],
    )
    text = refusal("scan", ["motor1", "0", "1", "motor2", "0", "1", str(two + 1)], ["det"])
    assert f"at most {two:,} points on 2 motors" in text
    # a grid's points are the product of its NUMs, each of which is small
    text = refusal("grid_scan", ["motor1", "0", "1", "1000", "motor2", "0", "1", "1000"], ["det"])
    assert "NUM 1 x NUM 2=1000000 makes 1,000,000 points on 2 motors" in text
    # spirals: the points follow from the ring spacing, estimated before bluesky builds them
    text = refusal("spiral", ["motor1", "motor2", "0", "0", "10", "10", "1e-6", "6"], ["det"])
    assert "spiral(): x_range, y_range, dr=" in text and "on 2 motors" in text
    assert "dr=0" in refusal("spiral", ["motor1", "motor2", "0", "0", "1", "1", "0", "6"], ["det"])
    text = refusal(
        "adaptive_scan", ["'det'", "motor", "0", "1", "1e-9", "0.1", "0.1", "false"], ["det"]
    )
    assert "(stop - start) / min_step" in text


def test_the_memory_estimate_is_above_what_bluesky_allocates():
    """``trajectory_bytes`` is the bound's premise: if a bluesky release builds its trajectory
    bigger, this fails and BYTES_PER_POINT_PER_AXIS must be measured again."""
    import tracemalloc

    import bluesky.plans as bp

    num = 5_000
    plans = {
        1: lambda: bp.scan([det], motor, 0, 1, num=num),
        2: lambda: bp.scan([det], motor1, 0, 1, motor2, 0, 1, num=num),
        3: lambda: bp.scan([det], motor, 0, 1, motor1, 0, 1, motor2, 0, 1, num=num),
    }
    for axes, make in plans.items():
        tracemalloc.start()
        try:
            plan = make()
            msg = next(plan)
            while msg.command != "trigger":  # past open_run and the first move: all built
                msg = plan.send(None)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        plan.close()
        assert peak <= trajectory_bytes(num, axes), (axes, peak / num)


def test_metadata_is_checked_as_the_start_document_takes_it(RE):
    spec = resolve_plan("count")
    for word, expected in (
        ("md=5", "count(): md=5 is int, not a mapping"),
        ("md=1e18", "count(): md=1e+18 is float, not a mapping"),
        ('md={"uid": "abc"}', "md['uid']='abc' sets 'uid', which the RunEngine writes itself"),
        ('md={"x": NaN}', "md['x']=nan is not a finite number"),
        ('md={"scan_id": "x"}', "does not fit the run start document"),
        ("md=" + "[" * 5000 + "]" * 5000, "nested more than 32 levels deep"),
        ("md=" + '{"a": ' * 40 + "1" + "}" * 40, "nested more than 32 levels deep"),
    ):
        with pytest.raises(PlanArgumentError) as info:
            build_plan_call(spec, ["det", word], DEVICES)
        assert expected in str(info.value), str(info.value)
    for key, value in (("uid", "abc"), ("time", "nan")):
        with pytest.raises(PlanArgumentError, match=rf"--md\['{key}'\]"):
            build_plan_call(spec, ["det"], DEVICES, md=parse_md([f"{key}={value}"]))
    # a plan argument nested beyond any use is a message too, not a RecursionError
    with pytest.raises(PlanArgumentError, match="nested more than 32 levels"):
        parse_value("[" * 5000 + "]" * 5000, DEVICES)
    # good metadata reaches the start document as given
    call = build_plan_call(
        spec, ["det", 'md={"sample": "A1", "tags": ["x", 2]}'], DEVICES, md={"operator": "kb"}
    )
    start = next(doc for name, doc in collect(RE, call.make()) if name == "start")
    assert (start["sample"], start["tags"], start["operator"]) == ("A1", ["x", 2], "kb")
