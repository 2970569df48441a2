"""The lab driver reads changed/failed counts from real ansible-playbook output."""

from conftest import ROOT
from deepseek_testkit import lab

FIXTURES = ROOT / "tests" / "unit" / "fixtures"
LAB_HOSTS = {
    "lab-monitor",
    "lab-primary-gpu1",
    "lab-primary-gpu2",
    "lab-primary-proxy",
    "lab-standby-gpu1",
    "lab-standby-gpu2",
    "lab-standby-proxy",
}


def run_from(fixture: str, returncode: int = 0) -> lab.PlaybookRun:
    return lab.PlaybookRun(returncode, 1.0, lab.parse_recap((FIXTURES / fixture).read_text()))


def test_first_converge_counts_changes_per_host():
    run = run_from("site-yml-first.txt")
    assert set(run.recap) == LAB_HOSTS
    assert run.recap["lab-monitor"] == {
        "ok": 27,
        "changed": 8,
        "unreachable": 0,
        "failed": 0,
        "skipped": 11,
        "rescued": 0,
        "ignored": 0,
    }
    assert run.changed == 56
    assert run.ok


def test_rerun_reports_zero_changes():
    run = run_from("site-yml-rerun.txt")
    assert set(run.recap) == LAB_HOSTS
    assert run.changed == 0
    assert run.ok


def test_failed_hosts_make_the_run_not_ok_even_with_exit_zero():
    run = run_from("site-yml-failed.txt", returncode=0)
    assert run.recap["lab-monitor"]["failed"] == 1
    assert not run.ok


def test_colour_codes_are_ignored():
    coloured = "PLAY RECAP ***\n\x1b[0;33mhost-a\x1b[0m : \x1b[0;32mok=3\x1b[0m \x1b[0;33mchanged=2\x1b[0m failed=0\n"
    assert lab.parse_recap(coloured) == {"host-a": {"ok": 3, "changed": 2, "failed": 0}}


def test_no_recap_is_not_ok():
    assert not lab.PlaybookRun(0, 1.0, lab.parse_recap("ERROR! the playbook could not be found\n")).ok
