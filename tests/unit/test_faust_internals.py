"""faust and aiokafka internals are touched in one guarded module, and checked here.

`services/infra/faust_internals.py` is the only module that touches private attributes
of faust or aiokafka (STYLE.md item 8). These tests fail loudly when a library upgrade
renames or removes one of them, when the installed versions are not those the module
was written for, and when a private attribute of either library is touched anywhere
else under services/.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from functools import cache
from pathlib import Path

import aiokafka
import faust
import mode
import pytest

from services.infra import faust_internals
from services.infra.faust_internals import (
    PRIVATE_ACCESSES,
    WRITTEN_FOR,
    LibraryVersionError,
    PrivateAccess,
    check_versions,
)

SERVICES = Path(__file__).resolve().parents[2] / "services"
GUARDED = Path(faust_internals.__file__).resolve()
_PRIVATE_ACCESS = re.compile(r"(?<!\bself)(?<!\bcls)\.(_[a-z]\w*)")
_ASSIGNED = r"self\.{name}\s*(:[^=\n]*)?=(?!=)"


def _owner(access: PrivateAccess) -> type:
    module, _, name = access.owner.rpartition(".")
    owner = getattr(importlib.import_module(module), name)
    assert isinstance(owner, type)
    return owner


def test_the_installed_libraries_are_those_the_module_was_written_for() -> None:
    check_versions()  # as at import


def test_another_version_fails_loudly_and_names_both_versions() -> None:
    newer = {"faust-streaming": "0.16.0", "aiokafka": WRITTEN_FOR["aiokafka"]}
    with pytest.raises(
        LibraryVersionError, match=r"faust-streaming 0\.16\.0 \(written for 0\.15\.3\)"
    ):
        check_versions(newer.__getitem__)


@pytest.mark.parametrize("access", PRIVATE_ACCESSES, ids=lambda a: f"{a.owner}.{a.name}")
def test_each_private_access_still_exists_in_the_library(access: PrivateAccess) -> None:
    owner = _owner(access)
    if access.kind == "method":
        assert callable(getattr(owner, access.name, None)), f"{access.owner} lost {access.name}"
    else:
        assert access.kind == "attribute"
        sources = "".join(inspect.getsource(c) for c in owner.__mro__ if c.__module__ != "builtins")
        pattern = _ASSIGNED.format(name=re.escape(access.name))
        assert re.search(pattern, sources), f"{access.owner} no longer sets self.{access.name}"


def test_the_overridden_methods_keep_the_signatures_the_overrides_were_written_for() -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread = inspect.signature(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer)
    assert list(thread.parameters) == ["self", "transport"]
    assert list(inspect.signature(faust_aiokafka.Consumer._new_consumer_thread).parameters) == [
        "self"
    ]


def test_the_quick_transport_is_what_the_broker_url_scheme_names() -> None:
    from faust.transport.drivers import by_url

    assert by_url("incidents://localhost:9092") is faust_internals.QuickTransport


@cache
def _library_private_names() -> frozenset[str]:
    """Every private method or attribute faust, mode or aiokafka define."""
    names: set[str] = set()
    defined = re.compile(r"def (_[a-z]\w*)|self\.(_[a-z]\w*)\s*(?::[^=\n]*)?=(?!=)")
    for package in (faust, mode, aiokafka):
        for path in Path(str(package.__file__)).parent.rglob("*.py"):
            for match in defined.finditer(path.read_text(encoding="utf-8")):
                names.add(match.group(1) or match.group(2))
    return frozenset(names)


def _own_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines itself (its own classes' methods and attributes)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
    return names


def library_internals_outside(root: Path, guarded: Path) -> list[str]:
    """`path:line name` for each private attribute of faust/aiokafka used outside it.

    The grep, as an AST walk over every module (a faust object reaches modules that
    never import faust, e.g. as `app.state.faust`): an attribute `x._name` (x not
    `self`/`cls`) whose name the libraries define and the module does not, and any
    override of a library's private method in a subclass of one of their classes.
    Own-object accesses (`self._task`) and the module's own privates are not flagged.
    """
    library = _library_private_names()
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.resolve() == guarded:
            continue
        text = path.read_text(encoding="utf-8")
        if not {m.group(1) for m in _PRIVATE_ACCESS.finditer(text)} & library:
            continue  # no attribute the libraries define: nothing to parse
        tree = ast.parse(text)
        own = _own_private_names(tree)
        where = path.relative_to(root.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in library:
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if not on_self and node.attr not in own:
                    found.append(f"{where}:{node.lineno} {node.attr}")
            elif isinstance(node, ast.ClassDef) and node.bases:
                based_on_library = any(
                    "faust" in ast.unparse(b) or "aiokafka" in ast.unparse(b) for b in node.bases
                )
                for item in node.body if based_on_library else ():
                    if not isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        continue
                    if item.name in library and not item.name.startswith("__"):
                        found.append(f"{where}:{item.lineno} override {item.name}")
    return found


def test_no_module_but_the_guarded_one_touches_faust_or_aiokafka_internals() -> None:
    assert library_internals_outside(SERVICES, GUARDED) == []
    assert library_internals_outside(SERVICES.parent / "tooling", GUARDED) == []


_AS_IT_WAS = """
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _QuickFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = 20
        return consumer


class GroupRejoin:
    async def _settled(self):
        consumer = self.app.consumer._thread._ensure_consumer()
        return consumer._coordinator.need_rejoin(consumer._subscription.subscription)
"""


def test_the_grep_finds_accesses_like_those_faustapp_had(tmp_path: Path) -> None:
    """The check itself works: code as faustapp.py was before the move is caught."""
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "old.py").write_text(_AS_IT_WAS, encoding="utf-8")
    found = library_internals_outside(tmp_path / "services", GUARDED)
    assert {line.split()[-1] for line in found} == {
        "_create_worker_consumer",
        "_fetch_max_wait_ms",
        "_thread",
        "_ensure_consumer",
        "_coordinator",
        "_subscription",
    }
