"""The serving stack is its own package: service/ imports extraction/ (and functional_equivalence/ victims), never
launch/; launch/serve.py and launch/serve_keys.py are thin command lines over it."""
import ast
import pathlib

from tests.conftest import REPO


def imported_modules(path: pathlib.Path) -> set:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module)
  return names


def test_service_never_imports_launch():
  files = sorted((REPO / "service").glob("*.py"))
  assert len(files) >= 5
  for f in files:
    bad = sorted(m for m in imported_modules(f) if m == "launch" or m.startswith("launch."))
    assert not bad, f"{f.name} imports {bad}"


def test_launch_has_no_serving_logic_left():
  assert not (REPO / "launch" / "service.py").exists() and not (REPO / "launch" / "keystore.py").exists()
  for name in ("serve.py", "serve_keys.py"):
    text = (REPO / "launch" / name).read_text()
    assert any(m == "service" or m.startswith("service.") for m in imported_modules(REPO / "launch" / name))
    assert "sqlite3" not in text and "FastAPI(" not in text
