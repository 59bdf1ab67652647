"""Every layer, fed any bytes, gives a tree or a DissectError, never anything else."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtrace.dissectors import DissectError, Field, all_layers

LAYERS = all_layers()
PARAMS = [None, {"queue_size": 4}, {"queue_size": 4, "event_idx": True}, {"queue_size": 0}]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), params=st.sampled_from(PARAMS))
def test_any_bytes_give_a_tree_or_a_dissect_error(layer, data, params):
    try:
        tree = layer.dissect(data, params=params)
    except DissectError as err:
        assert err.layer == layer.name
        assert 0 <= err.offset <= len(data)
        return
    assert isinstance(tree, Field)
    for node in tree.walk():
        assert node.offset >= 0 and node.offset + node.length <= len(data)


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
def test_every_layer_describes_its_fields_under_its_prefix(layer):
    specs = layer.fields()
    assert specs, layer.name
    for spec in specs:
        assert spec.abbrev == layer.prefix or spec.abbrev.startswith(layer.prefix + "."), spec.abbrev
        assert spec.label


def test_an_abbreviation_means_one_kind_of_value_across_all_layers():
    # One display filter must mean the same thing wherever a field appears
    # (DESIGN.md: the same abbreviations in vqtrace and in the Wireshark plugin).
    kinds: dict[str, tuple[str, str]] = {}
    for layer in LAYERS:
        for spec in layer.fields():
            if spec.kind == "none":
                continue
            seen = kinds.setdefault(spec.abbrev, (spec.kind, layer.name))
            assert seen[0] == spec.kind, f"{spec.abbrev}: {seen[0]} in {seen[1]}, {spec.kind} in {layer.name}"
