"""The package's shape: floors, no import cycles, no private names across modules, small modules.

Read from the source with `ast`, imports inside functions included: a lazy import hides a cycle
from Python but not from a reader.

The floors (`FLOORS`): each folder of `vit_jax/` imports only the folders its rule names, so the
data flow reads bottom-up: checkpoint files and data at the ground, models on them, the training
job on models, the tools and benchmarks on top. Nothing imports `tools/`.

`checkpoint/` holds what every family shares: no module of it is named after a registered family
or a foreign library whose key map or models belong in a family's folder (`NEUTRAL_FOLDERS`).
"""

import ast
import pathlib

import pytest

PACKAGE = 'vit_jax'
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 400

_BELOW_TRAINING = frozenset({'checkpoint', 'data', 'models', 'training'})
# Folder (first part below `vit_jax`; '' for the root modules) -> the folders it may import.
FLOORS: dict[str, frozenset[str]] = {
    'checkpoint': frozenset({'checkpoint'}),
    'data': frozenset({'data'}),
    'models': frozenset({'checkpoint', 'data', 'models'}),
    'training': _BELOW_TRAINING,
    'tools': _BELOW_TRAINING | {'tools'},
    'benchmarking': _BELOW_TRAINING | {'benchmarking'},
    'aot': _BELOW_TRAINING | {'aot', 'benchmarking'},  # compiles the job, counts its FLOPs
    '': _BELOW_TRAINING,  # `vit_jax.main`, the training CLI, and the package itself.
}
# Foreign libraries whose key maps and model builders live in the families' folders.
FOREIGN_LIBRARIES = frozenset({'timm', 'hf', 'transformers', 'torch', 'torchvision'})
# Folders whose module names carry no family name (`models.FAMILIES`) and no foreign library.
NEUTRAL_FOLDERS = frozenset({'checkpoint'})


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def package_modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(ROOT.rglob('*.py'))}


def is_private(name: str) -> bool:
  return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


class _Imports(ast.NodeVisitor):
  """The package modules one module imports, and the private package names it uses."""

  def __init__(self, name: str, is_package: bool, modules: set[str]):
    self.name, self.modules = name, modules
    self.package = name if is_package else name.rpartition('.')[0]
    self.edges: set[str] = set()
    self.private: set[str] = set()
    self.aliases: dict[str, str] = {}  # Local name -> package module it is bound to.

  def _target(self, module: str | None, level: int) -> str | None:
    if level:
      base = self.package.split('.')
      base = base[:len(base) - level + 1]
      module = '.'.join(base + ([module] if module else []))
    return module

  def _add(self, module: str) -> None:
    if module != self.name:
      self.edges.add(module)

  def visit_Import(self, node: ast.Import) -> None:
    for alias in node.names:
      if alias.name in self.modules:
        self._add(alias.name)
        if alias.asname:
          self.aliases[alias.asname] = alias.name

  def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
    source = self._target(node.module, node.level)
    if source is None or (source != PACKAGE and not source.startswith(PACKAGE + '.')):
      return
    for alias in node.names:
      full = f'{source}.{alias.name}'
      if full in self.modules:  # `from vit_jax import models`: the module itself.
        self._add(full)
        self.aliases[alias.asname or alias.name] = full
        continue
      if source in self.modules:
        self._add(source)
      if is_private(alias.name) and source != self.name:
        self.private.add(f'{source}.{alias.name}')

  def visit_Attribute(self, node: ast.Attribute) -> None:
    if (isinstance(node.value, ast.Name) and node.value.id in self.aliases
        and is_private(node.attr)):
      self.private.add(f'{self.aliases[node.value.id]}.{node.attr}')
    self.generic_visit(node)


def scan() -> dict[str, _Imports]:
  modules = package_modules()
  found = {}
  for name, path in modules.items():
    visitor = _Imports(name, path.name == '__init__.py', set(modules))
    visitor.visit(ast.parse(path.read_text(), filename=str(path)))
    found[name] = visitor
  return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every cycle a depth-first search meets (one per back edge), as closed paths `a -> ... -> a`."""
  cycles, path, state = [], [], {}  # state: 'open' while on the path, then 'done'.

  def visit(node):
    state[node] = 'open'
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        cycles.append(path[path.index(nxt):] + [nxt])
      elif nxt not in state and nxt in graph:
        visit(nxt)
    path.pop()
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node)
  return cycles


def folder(module: str) -> str:
  """The folder of `vit_jax.X.Y` ('X'), '' for the root modules."""
  parts = module.split('.')
  return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else ''


def floor_violations(graph: dict[str, set[str]]) -> set[str]:
  """Every import that runs against `FLOORS`, and every folder the rules do not name."""
  problems = set()
  for module, edges in graph.items():
    if folder(module) not in FLOORS:
      problems.add(f'floor: {module} is in a folder FLOORS has no rule for')
      continue
    for target in edges:
      if folder(target) not in FLOORS[folder(module)]:
        problems.add(f'floor: {module} imports {target} ({folder(module) or "root"} may import '
                     f'{", ".join(sorted(FLOORS[folder(module)]))})')
  return problems


def naming_violations(modules: list[str], families: set[str]) -> set[str]:
  """Every module of a `NEUTRAL_FOLDERS` folder named (a `_`-separated word of its name) after a
  family or a foreign library."""
  problems = set()
  for module in modules:
    if folder(module) not in NEUTRAL_FOLDERS:
      continue
    words = set(module.rpartition('.')[2].split('_'))
    for word in sorted(words & (families | FOREIGN_LIBRARIES)):
      problems.add(f'name: {module} is named after {word!r}; {folder(module)}/ is shared by '
                   'every family (family code belongs in models/<family>/)')
  return problems


def violations() -> set[str]:
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  found = scan()
  graph = {name: v.edges for name, v in found.items()}
  problems = {'cycle: ' + ' -> '.join(cycle) for cycle in find_cycles(graph)}
  problems |= floor_violations(graph)
  problems |= naming_violations(list(graph), set(models.FAMILIES))
  problems |= {f'private: {name} uses {private}' for name, v in found.items()
               for private in v.private}
  for path in package_modules().values():
    lines = len(path.read_text().splitlines())
    if lines > MAX_LINES:
      problems.add(f'size: {path.relative_to(ROOT.parent)} has {lines} lines')
  return problems


def test_find_cycles_reports_a_closed_path():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}, 'e': set()}
  assert find_cycles(graph) == [['a', 'b', 'c', 'a']]
  assert find_cycles({'a': {'b'}, 'b': set()}) == []


def test_floors_cycles_private_imports_and_module_sizes():
  problems = violations()
  assert not problems, 'Package layout problems:\n' + '\n'.join(sorted(problems))


@pytest.mark.parametrize('importer,imported', [
    ('vit_jax.checkpoint.npz', 'vit_jax.models.registry'),  # the ground floor reaches up
    ('vit_jax.data.preprocess', 'vit_jax.checkpoint.tree'),  # data imports no other folder
    ('vit_jax.models.loader', 'vit_jax.training.workdir'),
    ('vit_jax.training.train', 'vit_jax.tools.fewshot'),  # nothing imports tools/
    ('vit_jax.benchmarking.suite', 'vit_jax.tools.parity'),
    ('vit_jax.main', 'vit_jax.tools.classify'),
])
def test_an_arrow_that_runs_back_up_is_reported(importer, imported):
  graph = {importer: {imported}, imported: set()}
  assert floor_violations(graph) == {
      f'floor: {importer} imports {imported} ({folder(importer) or "root"} may import '
      f'{", ".join(sorted(FLOORS[folder(importer)]))})'}


def test_the_floors_allow_the_arrows_that_run_down():
  graph = {'vit_jax.models.loader': {'vit_jax.checkpoint.npz', 'vit_jax.data.image_io'},
           'vit_jax.tools.fewshot': {'vit_jax.training.fewshot', 'vit_jax.models.loader'},
           'vit_jax.main': {'vit_jax.training.train'}, 'vit_jax': set()}
  assert not floor_violations(graph)
  assert floor_violations({'vit_jax.newfolder.x': set()}) == {
      'floor: vit_jax.newfolder.x is in a folder FLOORS has no rule for'}


@pytest.mark.parametrize('module,named_after', [
    ('vit_jax.checkpoint.swin_keys', 'swin'),  # a family
    ('vit_jax.checkpoint.bit_npz', 'bit'),
    ('vit_jax.checkpoint.timm_import', 'timm'),  # a foreign library
    ('vit_jax.checkpoint.hf_keys', 'hf'),
    ('vit_jax.checkpoint.torch_models', 'torch'),
])
def test_a_shared_module_named_after_a_family_or_library_is_reported(module, named_after):
  problems = naming_violations([module, 'vit_jax.models.swin.timm_keys', 'vit_jax.checkpoint.tree',
                                'vit_jax.checkpoint.big_vision'], {'swin', 'bit', 'vit'})
  assert [p.split(';')[0] for p in problems] == [f'name: {module} is named after {named_after!r}']


@pytest.mark.parametrize('source,expected', [
    ('from vit_jax.models.vit import model\nx = model._dtype', {'vit_jax.models.vit.model._dtype'}),
    ('from vit_jax.models.vit.model import _dtype', {'vit_jax.models.vit.model._dtype'}),
    ('from vit_jax.models.vit.model import __doc__, DropPath', set()),
])
def test_private_names_are_detected(source, expected):
  visitor = _Imports('vit_jax.other', False,
                     {'vit_jax', 'vit_jax.models.vit.model', 'vit_jax.other'})
  visitor.visit(ast.parse(source))
  assert visitor.private == expected
  assert visitor.edges == {'vit_jax.models.vit.model'}
