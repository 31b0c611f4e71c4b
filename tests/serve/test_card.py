"""The model card's words for the head (ray_ser.serve.card.head_words)."""

from ray_ser.serve.card import head_words


def test_the_mlp_head_is_described_by_its_mean_frame_not_its_unused_pooling():
    assert head_words({"arch": "mlp", "mlp_hidden": 0, "pooling": "attention"}) == "linear head on the mean frame"
    assert head_words({"arch": "mlp", "mlp_hidden": 64}) == "MLP head (64 hidden units) on the mean frame"
    assert head_words({"arch": "tcgru", "pooling": "attention", "layer_mix": "learned"}) == (
        "tcgru head, attention pooling; a learned softmax mix of the layers")
