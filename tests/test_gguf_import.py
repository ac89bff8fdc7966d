"""`edged model import-gguf` on SmolLM2-135M-Instruct (PyPI GGUF), checked against independent references."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf_reference import ReferenceBPE, ReferenceLlama

PROMPT = [
    {"role": "system", "content": "You control the lights of a house."},
    {"role": "user", "content": "Turn off the kitchen lights, please."},
]
TOKEN_SAMPLES = [
    "Hello world",
    "dim the hallway to 30% at 21:45",
    "  leading spaces and trailing  ",
    "line one\nline two\n\n\ttabbed",
    "Zürich, São Paulo, 東京 — café ☕",
    "<|im_start|>user\nturn off the lights<|im_end|>",
    "pump_3 vibration=7.9mm/s, temp 71°C",
]


@pytest.fixture(scope="module")
def reference():
    from edged.models.store import demo_gguf

    return ReferenceLlama(demo_gguf())


@pytest.fixture(scope="module")
def imported(smollm2_dir):
    from mlx_lm import load

    return load(str(smollm2_dir))


def test_import_writes_a_quantised_mlx_directory(smollm2_dir):
    """config.json, safetensors, tokenizer with the GGUF chat template; weights stay 4/8-bit."""
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8  # the GGUF's Q8_0 embedding
    tok_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_config["chat_template"] and tok_config["eos_token"] == "<|im_end|>"
    size = (smollm2_dir / "model.safetensors").stat().st_size
    assert size < 110e6  # the 98 MB GGUF, not a dequantised 540 MB copy


def test_logits_match_the_numpy_reference(imported, reference):
    """Every position's logits agree with the independent forward pass; the top token is the same."""
    import mlx.core as mx

    model, tok = imported
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    ours = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    ref = reference.logits(ids)
    diff = float(np.abs(ours - ref).max())
    print(
        f"max |logit difference| over {len(ids)} positions: {diff:.5f} (logit range {ref.min():.1f}..{ref.max():.1f})"
    )
    assert diff < 0.1  # fp16 scales vs float32 dequantisation; a wrong Q/K order gives errors of several units
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_greedy_text_matches_the_reference(imported, reference):
    """20 greedy tokens from the imported model equal the reference's, and read as an answer."""
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tok = imported
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    ours = [r.token for r in stream_generate(model, tok, mx.array(ids), max_tokens=20, sampler=make_sampler(temp=0.0))]
    ref = reference.greedy(ids, len(ours))
    print("greedy:", repr(tok.decode(ours)))
    assert ours == ref
    assert len(ours) >= 5


@pytest.mark.parametrize("text", TOKEN_SAMPLES)
def test_tokenizer_matches_the_reference_bpe(imported, reference, text):
    """The rebuilt tokenizer splits text exactly as a plain BPE over the GGUF vocabulary and merges."""
    _, tok = imported
    assert tok.encode(text, add_special_tokens=False) == ReferenceBPE(reference.meta).encode(text)
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def _write_gguf(path, arch: str, tensors: dict, raw_types: dict | None = None):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    for name, array in tensors.items():
        if raw_types and name in raw_types:
            writer.add_tensor(name, array, raw_shape=raw_types[name][1], raw_dtype=raw_types[name][0])
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_architecture_is_refused(tmp_path, capsys):
    """Another architecture is refused by name, exit code 2, nothing written."""
    from edged.cli import main

    src = tmp_path / "gpt2.gguf"
    _write_gguf(src, "gpt2", {"token_embd.weight": np.zeros((2, 4), np.float32)})
    assert main(["model", "import-gguf", str(src), str(tmp_path / "out")]) == 2
    assert "architecture 'gpt2' is not supported" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_k_quants_are_refused(tmp_path, capsys):
    """A K-quantised tensor is refused with its type named, never converted to a wrong model."""
    from gguf import GGMLQuantizationType

    from edged.cli import main

    src = tmp_path / "k.gguf"
    q6k = np.zeros(210, dtype=np.uint8)  # one Q6_K block: 256 weights in 210 bytes
    _write_gguf(
        src, "llama", {"blk.0.ffn_down.weight": q6k}, {"blk.0.ffn_down.weight": (GGMLQuantizationType.Q6_K, (1, 210))}
    )
    assert main(["model", "import-gguf", str(src), str(tmp_path / "out")]) == 2
    assert "Q6_K" in capsys.readouterr().err


def test_qwen3_gguf_round_trip(tiny_model_dir, tmp_path):
    """A qwen3 GGUF (F32 tensors, qwen2 pre-tokenizer, thinking template) imports to the same model and tokens."""
    import mlx.core as mx
    from mlx_lm import load

    from edged.models.files import read_facts
    from edged.models.gguf_import import import_gguf
    from edged.models.testmodel_gguf import export_qwen3_gguf

    export_qwen3_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    out = import_gguf(tmp_path / "tiny.gguf", tmp_path / "imported")
    original, original_tok = load(str(tiny_model_dir))
    model, tok = load(str(out))
    for text in TOKEN_SAMPLES + ["<think>\nplan\n</think>\n\nanswer", "x=12345;\r\n  y"]:
        assert tok.encode(text) == original_tok.encode(text), text
    ids = mx.array([original_tok.apply_chat_template(PROMPT, add_generation_prompt=True, enable_thinking=False)])
    diff = mx.abs(model(ids) - original(ids)).max().item()
    assert diff < 1e-4
    facts = read_facts(out)
    assert facts.architecture == "qwen3" and facts.thinking_template and facts.think_tokens
    assert tok.think_end_id == 151668
