"""Continuous load for the upgrade test: one generate request after another until a stop file appears.

Writes one line per request to the output file: ``ok <text>`` or ``error <status or reason>``. Only the
standard library, so it runs with the node's system python3.
"""

import json
import sys
import time
import urllib.error
import urllib.request

URL, OUTPUT, STOP = sys.argv[1], sys.argv[2], sys.argv[3]
BODY = json.dumps({"text_input": "upgrade under load", "sampling_param_max_tokens": 12}).encode()


def once() -> str:
    """One generate request; its answer text or what went wrong."""
    request = urllib.request.Request(URL, data=BODY, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (the node's own server)
            return "ok " + json.loads(answer.read())["text_output"]
    except urllib.error.HTTPError as exc:
        return f"error {exc.code} {exc.read()[:200]!r}"
    except OSError as exc:
        return f"error {exc}"


def main() -> None:
    """Send requests one after another until the stop file exists."""
    with open(OUTPUT, "a", buffering=1) as out:
        while True:
            try:
                open(STOP).close()
                return
            except FileNotFoundError:
                pass
            out.write(once() + "\n")
            time.sleep(0.01)


if __name__ == "__main__":
    main()
