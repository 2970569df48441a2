"""triton_server loads the model once per run, whether the run (re)starts the server or only reloads it.

A server that starts loads the configured version itself (``--load-model``); a run that restarts it must not
reload it through the repository API as well (for a 671B model that is a second load of about an hour). The
side_effect step kept the server's journal of each run in /root/load-once/<step>.log (tasks/load-once.yml);
Triton writes "successfully loaded '<model>'" once per load of a version. The steps:

- fresh: converge on a fresh host with old_first (molecule.yml; the unit and the model files are new: the
  first start loads, and the old handlers then unloaded and loaded it again);
- upgrade-new-first: version 1 -> 2 under load, new_first (a model change of a running server: one reload);
- rollback-old-first: version 2 -> 1 with old_first, the production setting (inventories/example): the old
  version is unloaded, then the configured one loaded, once;
- restart-and-upgrade-old-first: version 1 -> 2 with old_first and a changed unit (log level): the restart
  loads version 2, and nothing is loaded again through the API (the old handlers loaded it twice here);
- restart-old-first: the unit back as it was (the restart loads, nothing else).

Run it with the scenario (the lead's `make test`, or alone:
``PATH=.venv/bin:$PATH molecule/scripts/run-molecule.sh triton_server:default``).
"""

import re

import pytest

MODEL = "deepseek"
LOADED = re.compile(rf"successfully loaded '{MODEL}'")
UNLOADED = re.compile(rf"successfully unloaded '{MODEL}'")
STEPS = ["fresh", "upgrade-new-first", "rollback-old-first", "restart-and-upgrade-old-first", "restart-old-first"]


def journal(host, step):
    log = host.file(f"/root/load-once/{step}.log")
    assert log.exists, f"side_effect.yml kept no journal for step {step}"
    return log.content_string.splitlines()


@pytest.mark.parametrize("step", STEPS)
def test_each_run_loads_the_model_exactly_once(host, step):
    loads = [line for line in journal(host, step) if LOADED.search(line)]
    assert len(loads) == 1, f"{step}: {len(loads)} loads of {MODEL}: {loads}"


def test_old_first_unloads_the_served_version_before_loading_the_new_one(host):
    lines = journal(host, "rollback-old-first")
    unloaded = next(i for i, line in enumerate(lines) if UNLOADED.search(line))
    loaded = next(i for i, line in enumerate(lines) if LOADED.search(line))
    assert unloaded < loaded


def test_a_run_that_restarts_the_server_does_not_reload_through_the_api(host):
    # The restart's stop unloads version 1 and the start loads version 2: exactly one of each, in that order.
    lines = journal(host, "restart-and-upgrade-old-first")
    assert len([line for line in lines if UNLOADED.search(line)]) == 1
    assert [i for i, line in enumerate(lines) if UNLOADED.search(line)] < [
        i for i, line in enumerate(lines) if LOADED.search(line)
    ]
