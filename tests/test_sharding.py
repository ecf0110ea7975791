"""Sharding rules on meshes of any shape (abstract meshes: no devices needed); the end-to-end
check that DP, FSDP and one device train identically is in test_distributed.py."""

import jax
from jax.sharding import AbstractMesh, PartitionSpec as P
import pytest

from vit_jax.training import sharding

MESH = AbstractMesh((4, 2), ('data', 'fsdp'))


def test_first_matching_rule_wins_and_unmatched_leaves_are_replicated():
  rules = [('head', 'replicate'), ('kernel$', ('data', None)), ('.*', ('fsdp',))]
  assert sharding.spec_for('head/kernel', (8, 8), MESH, rules) == P()
  assert sharding.spec_for('Dense_0/kernel', (8, 6), MESH, rules) == P('data', None)
  assert sharding.spec_for('Dense_0/bias', (6,), MESH, rules) == P('fsdp')
  assert sharding.spec_for('Dense_0/bias', (6,), MESH, rules[:2]) == P()


def test_fsdp_splits_the_largest_divisible_dimension_of_large_leaves():
  assert sharding.spec_for('w', (3, 64, 32), MESH, [('.*', 'fsdp:fsdp:16')]) == P(None, 'fsdp',
                                                                                 None)
  assert sharding.spec_for('w', (3, 65, 32), MESH, [('.*', 'fsdp:fsdp:16')]) == P(None, None,
                                                                                 'fsdp')
  assert sharding.spec_for('w', (3, 5), MESH, [('.*', 'fsdp:fsdp:16')]) == P()  # Too small.
  assert sharding.spec_for('w', (128, 256), MESH, [('.*', 'fsdp')]) == P(None, 'data')


@pytest.mark.parametrize('rule,match', [
    (('.*', 'fsdp:model'), "mesh axis 'model'"),
    (('.*', 'shard'), "Unknown sharding spec 'shard'"),
    (('.*', ('data',)), r'\(6, 3\) is not divisible by mesh axes'),
    (('.*', ('data', None, None)), r'gives .* to w of shape \(6, 3\)'),
])
def test_bad_rules_are_errors_naming_the_rule(rule, match):
  with pytest.raises(ValueError, match=match):
    sharding.spec_for('w', (6, 3), MESH, [rule])


def test_batch_is_split_over_every_axis_but_model():
  assert sharding.batch_size_per_unit(MESH) == 8
  assert sharding.batch_size_per_unit(AbstractMesh((4, 2), ('data', 'model'))) == 4


def test_mesh_sizes_are_checked_against_the_devices():
  count = jax.device_count()
  assert dict(sharding.make_mesh([('data', -1)]).shape) == {'data': count}
  with pytest.raises(ValueError, match=f'needs {2 * count} devices, there are {count}'):
    sharding.make_mesh([('data', 2 * count)])
  with pytest.raises(ValueError, match='repeats an axis name'):
    sharding.make_mesh([('data', 1), ('data', -1)])
