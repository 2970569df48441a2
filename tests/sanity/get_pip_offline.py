"""Stand-in for the pip bootstrap script ansible-test downloads from a host this project cannot reach.

ansible-test creates its sanity virtualenvs without pip and runs a cached "get-pip" script in them
with pip-install arguments (for example `pip==24.2 --no-setuptools`). This script does the same job
offline: it imports the pip wheel that ships inside CPython's own ensurepip, and runs `pip install`
with those arguments, so pip itself and everything else come from the package index as usual.
"""

import ensurepip
import glob
import os
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main() -> int:
    """Install the requested packages with the pip wheel bundled with this Python."""
    bundled = glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl"))
    if not bundled:
        print("no pip wheel bundled with this Python's ensurepip", file=sys.stderr)
        return 1
    sys.path.insert(0, bundled[0])
    from pip._internal.cli.main import main as pip_main

    return pip_main(["install", *[arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]])


if __name__ == "__main__":
    sys.exit(main())
