"""systemd Exec lines: what systemd would hand the program is exactly the argv we meant."""

import shlex

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.systemd_unit import exec_line, exec_word


def systemd_split(line: str) -> list[str]:
    """How systemd reads the words back (continuations, quotes, escapes, %% and $$)."""
    joined = line.replace("\\\n", " ")
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(joined, posix=True)]


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/docker", "run", "--gpus", '"device=0,1,2,3"', "--env", "NCCL_IB_HCA=mlx5_0,mlx5_1"],
        ["/bin/sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -p 2233"],
        ["tritonserver", "--log-format=default", "50%", "$HOME", "a\\b", ""],
    ],
)
def test_round_trip(argv):
    assert systemd_split(exec_line(argv)) == argv


def test_specifiers_and_variables_are_escaped_not_expanded():
    assert exec_word("100%") == '"100%%"'
    assert exec_word("${PATH}") == '"$${PATH}"'
    assert exec_word("--model-repository=/models") == "--model-repository=/models"


def test_empty_command_is_refused():
    with pytest.raises(ValueError, match="empty command"):
        exec_line([])


def test_only_named_variables_stay_expansions():
    line = exec_line(["triton", "--key=${ADMIN_KEY}", "${HOME}"], expand=("ADMIN_KEY",))
    assert "--key=${ADMIN_KEY}" in line
    assert '"$${HOME}"' in line
