"""The deepseek.cluster checkout's test, lab and benchmark support code, one importable package.

Installed into the project's virtualenv as an editable package (``make venv``: ``pip install -e tests/testkit``),
so unit tests, molecule verifiers, benchmarks and ``python -m deepseek_testkit.lab`` import it by name.

- ``ROOT``: the checkout this package belongs to (``DEEPSEEK_CLUSTER_ROOT`` overrides it).
- ``load_module``: one file the checkout ships that is not a package (the lab model, a module_utils
  file, the GPU check), imported from its path.
- ``collection_module``: a module of this checkout's collection as ``ansible_collections.deepseek.cluster.*``,
  through ansible-core's own collection loader.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType


def _checkout_root() -> Path:
    """The directory holding galaxy.yml above this package, or ``$DEEPSEEK_CLUSTER_ROOT`` when set."""
    if os.environ.get("DEEPSEEK_CLUSTER_ROOT"):
        return Path(os.environ["DEEPSEEK_CLUSTER_ROOT"]).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "galaxy.yml").is_file():
            return parent
    raise RuntimeError(f"no galaxy.yml above {here}: set DEEPSEEK_CLUSTER_ROOT to the deepseek.cluster checkout")


ROOT = _checkout_root()
COLLECTIONS = ROOT / "collections"  # ansible_collections/deepseek/cluster links back to ROOT


def load_module(path: Path | str, name: str | None = None) -> ModuleType:
    """Import the Python file ``path`` as module ``name`` (default: the file's stem) and register it.

    Once, as ``import`` does: a module of that name already loaded from that file is returned as it is. Later
    ``import name`` statements (a sibling file importing it, such as the lab model's ``from tiny_moe import``)
    get this module.
    """
    path = Path(path).resolve()
    name = name or path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def collection_module(name: str) -> ModuleType:
    """``ansible_collections.deepseek.cluster.<name>`` from this checkout (e.g. ``plugins.module_utils.parallel_plan``).

    Installs ansible-core's collection finder for the checkout's collections/ once, as ansible does for a play.
    """
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    if not any(isinstance(finder, _AnsibleCollectionFinder) for finder in sys.meta_path):
        _AnsibleCollectionFinder(paths=[str(COLLECTIONS)])._install()
    return importlib.import_module(f"ansible_collections.deepseek.cluster.{name}")
