"""Held-out bits per byte: the text streamed in chunks, every token predicted from all before it."""
import math

import pytest
import torch
import torch.nn.functional as F

from docstream.model import build_model
from docstream.testing.checkpoints import make_random_checkpoint
from docstream.train.data import DOC_SEPARATOR
from docstream.train.loop import bits_per_byte


@pytest.fixture(scope="module")
def model():
    # widths multiples of 16, like released models
    return build_model(make_random_checkpoint("7", n_layer=2, n_embd=32, head_size=16, vocab_size=1000, seed=3,
                                              lora={"decay": 16, "iclr": 16, "value": 16, "gate": 16}))


def test_bits_per_byte_is_the_chunked_cross_entropy(model):
    ids = torch.randint(0, 1000, (21,), generator=torch.Generator().manual_seed(0)).tolist()
    inputs = [DOC_SEPARATOR] + ids[:-1]
    nats, state = 0.0, None
    for start in range(0, len(ids), 8):  # the loop it runs, written out: the same forwards, so bitwise
        logits, state = model.forward(inputs[start:start + 8], state, all_logits=True)
        nats += F.cross_entropy(logits[0], torch.tensor(ids[start:start + 8]), reduction="sum").item()
    assert bits_per_byte(model, ids, 50, chunk_len=8) == nats / math.log(2) / 50
    # other chunk lengths: agreement to float32 rounding
    assert bits_per_byte(model, ids, 50, chunk_len=5) == pytest.approx(nats / math.log(2) / 50, rel=1e-5)
    with pytest.raises(ValueError, match="empty"):
        bits_per_byte(model, [], 1)
