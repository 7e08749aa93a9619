"""Offline description generation and the descriptions file format."""

import pytest

from starft_pipeline.data.descriptions import (
    DescriptionsError,
    descriptions_document,
    expand_pools,
    flatten_descriptions,
)

POOLS = {"background": ["a photo of a {c} on grass.", "a {c} in the snow."], "texture": ["a striped {c}."]}


def test_expand_pools_fills_the_class_where_it_reads_naturally():
    table = expand_pools(["ring", "star"], POOLS, ["texture", "background"])
    assert table["texture"]["ring"] == ["a striped ring."]
    assert table["background"]["star"] == ["a photo of a star on grass.", "a star in the snow."]


def test_unknown_pool_is_named():
    with pytest.raises(DescriptionsError, match=r"\['weather'\] have no template pool"):
        expand_pools(["ring"], POOLS, ["weather"])


def test_flatten_and_select_keep_rows_aligned():
    document = descriptions_document(
        expand_pools(["ring", "star"], POOLS, ["background", "texture"]), ["ring", "star"], "offline", {}
    )
    pool = flatten_descriptions(document, ["ring", "star"])
    assert len(pool.texts) == 6
    texture = pool.select(["texture"])
    positions = pool.positions_of(["texture"])
    assert texture.texts == tuple(pool.texts[i] for i in positions) == ("a striped ring.", "a striped star.")
    assert texture.labels == (0, 1)
    assert pool.indices_by_class(2)[1] == [2, 3, 5]


def test_class_without_descriptions_is_named():
    document = {"descriptions": {"background": {"ring": ["a ring on grass."]}}}
    with pytest.raises(DescriptionsError, match="no 'background' descriptions for class 'star'"):
        flatten_descriptions(document, ["ring", "star"])


def test_missing_confounder_type_is_named():
    document = {"descriptions": {"background": {"ring": ["a ring on grass."]}}}
    pool = flatten_descriptions(document, ["ring"])
    with pytest.raises(DescriptionsError, match=r"confounder type\(s\) \['texture'\] are not in the descriptions"):
        pool.select(["texture"])
