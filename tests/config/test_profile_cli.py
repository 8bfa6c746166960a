"""`daqbridge config check | migrate | reference`, and docs/profile.md being current."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from daqbridge.cli import main
from daqbridge.config import dumps_toml, load_profile, profile_reference_markdown
from daqbridge.config._reference import BEGIN, END
from tests.config.profile_support import DOC, LAB_EXAMPLE, ROOT, SIM_TOML, sim_data
from tests.config.test_profile_migrate import LEGACY


def test_check_ok_prints_a_summary_table(capsys):
    assert main(["config", "check", str(SIM_TOML)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {SIM_TOML}")
    for line_start in ("sim_stage ", "sim_meter ", "sim_dmm "):
        assert any(line.startswith(line_start) for line in out.splitlines())
    assert "sim_stage_x, sim_stage_y" in out and "shadow" in out and "sim-tcp" in out
    assert "coupling: sim_meter follows the power of sim_laser" in out


def test_check_without_file_checks_the_embedded_profile(capsys):
    assert main(["config", "check"]) == 0
    assert "simulated lab" in capsys.readouterr().out


def test_check_reports_every_error_with_file_line_key_and_fix(tmp_path, capsys):
    data = sim_data()
    data["instruments"][0]["baudrate"] = 19200
    data["instruments"][1]["driver"] = "newport"
    path = tmp_path / "bad.toml"
    path.write_text(dumps_toml(data))
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:" in err
    assert "error: instruments[0].baudrate: unknown key 'baudrate'" in err
    assert "error: instruments[1].driver: unknown driver 'newport'" in err
    assert err.count("    fix: ") == 2
    assert "2 error(s)" in err


def test_check_port_existence_and_no_port_check(capsys):
    assert main(["config", "check", str(LAB_EXAMPLE)]) == 1
    err = capsys.readouterr().err
    assert err.count("does not exist on this machine") == 4
    assert main(["config", "check", "--no-port-check", str(LAB_EXAMPLE)]) == 0
    assert "ports not checked" in capsys.readouterr().out


def test_check_strict_fails_on_warnings(tmp_path, capsys):
    data = sim_data()
    data["stacks"]["legacy"] = False
    path = tmp_path / "w.toml"
    path.write_text(dumps_toml(data))
    assert main(["config", "check", str(path)]) == 0
    assert "warning: instruments[1].stack" in capsys.readouterr().err
    assert main(["config", "check", "--strict", str(path)]) == 1


def test_check_syntax_error_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.toml"
    path.write_text("[lab]\nname = 'x'\nport = /dev/x\n")
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3: error: TOML syntax error at column 8" in err
    assert main(["config", "check", str(tmp_path / "nope.toml")]) == 1
    assert "profile file not found" in capsys.readouterr().err


def test_migrate_writes_a_profile_and_refuses_to_overwrite(tmp_path, capsys):
    src = tmp_path / "legacy.toml"
    src.write_text(LEGACY)
    out = tmp_path / "lab.toml"
    assert main(["config", "migrate", str(src), "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"wrote {out}" in report and "migration complete" in report
    assert [i.stack for i in load_profile(out).instruments] == ["legacy"] * 4
    assert main(["config", "migrate", str(src), "-o", str(out)]) == 1
    assert "not overwritten" in capsys.readouterr().err
    assert main(["config", "migrate", str(src), "-o", str(out), "--force"]) == 0


def test_migrate_to_stdout_and_reports_decisions(tmp_path, capsys):
    src = tmp_path / "legacy.toml"
    src.write_text('[instruments.s]\ntype = "esp300"\nport = "/dev/ttyS0"\naxes = [1]\n')
    assert main(["config", "migrate", str(src)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("# daqbridge lab profile, migrated from")
    assert "decide: instruments.s.axes[0]: axis 1 has no travel limits" in captured.err
    assert "migration needs attention" in captured.err


def test_reference_prints_markdown_and_checks_the_doc(tmp_path, capsys):
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == profile_reference_markdown()
    doc = tmp_path / "profile.md"
    doc.write_text(f"# intro\n\n{BEGIN}\nstale\n{END}\n\nafter\n")
    assert main(["config", "reference", "--check", str(doc)]) == 1
    assert main(["config", "reference", "--update", str(doc)]) == 0
    assert main(["config", "reference", "--check", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# intro\n") and text.endswith("\n\nafter\n") and "stale" not in text


def test_docs_profile_md_is_up_to_date_with_the_models():
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] + "\n" == profile_reference_markdown(), (
        "docs/profile.md is outdated: run `daqbridge config reference --update docs/profile.md`"
    )
    for key in ("baud_rate", "wavelength_limits", "frames_dir", "addresses", "couplings"):
        assert f"`{key}`" in text or key in text


def test_reference_documents_every_field_of_every_model():
    from daqbridge.config._models import INSTRUMENT_CLASSES

    markdown = profile_reference_markdown()
    for driver, cls in INSTRUMENT_CLASSES.items():
        assert f"### `[instruments.{driver}]`" in markdown
        settings = cls.model_fields[driver].default_factory or cls.model_fields[driver].annotation
        for name, info in [*cls.model_fields.items(), *settings.model_fields.items()]:
            if name != driver:
                assert f"| `{name}` |" in markdown
            assert name == "driver" or info.description, f"{cls.__name__}.{name}: no description"


@pytest.mark.timeout(60)
def test_config_check_as_a_subprocess():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "daqbridge", "config", "check", str(SIM_TOML)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK:")
