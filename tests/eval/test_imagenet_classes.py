"""ImageNet-1k class names, offline, in the classifier's order."""

import pytest

from featup.eval.imagenet_classes import imagenet_class_name, imagenet_class_names


def test_names_are_the_thousand_classes_in_classifier_order():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[0], names[285], names[450], names[999]) == ("tench", "Egyptian cat", "bobsled", "toilet tissue")
    assert imagenet_class_name(285) == "Egyptian cat"


@pytest.mark.parametrize("index", [-1, 1000])
def test_an_index_outside_imagenet_is_rejected(index):
    with pytest.raises(ValueError, match=r"0\.\.999"):
        imagenet_class_name(index)
