"""The sparse overlay: exact LoRA encoding, llama.cpp parity, the on-disk format and its checks."""

from __future__ import annotations

import json
import stat

import gguf
import llama_cpp
import numpy as np
import pytest

from engine import llama_native
from engine import overlay as ov
from engine.errors import EngramError
from engine.model_file import open_model
from engine.overlay import CorruptOverlay, ForeignOverlay, NeuronBlock, OverlayError, SparseOverlay
from tests.tiny_gguf import ARCHITECTURES, N_EMBD, N_FF

BASE = "b" * 64
# Mixed r on every matrix kind, two blocks sharing layer 1's ffn_down.
SPEC = [(1, "ffn_down", 8, 1), (1, "ffn_down", 3, 2), (2, "ffn_up", 16, 2),
        (2, "ffn_down", 4, 2), (3, "ffn_gate", 5, None)]
TOKENS = [2] + list(range(300, 340))


def test_a_fused_gate_and_up_is_one_lora_pair_addressing_both_halves(make_overlay):
    """Phi 3's ffn_up holds the gate's rows, then the up rows: neuron j's gate is row j and
    its up row d_ff + j, so one pair carries both, gate first, exactly."""
    overlay = make_overlay(BASE, [(2, "ffn_up", 6, 1), (2, "ffn_gate", 3, 1),
                                  (2, "ffn_up", 2, None), (3, "ffn_gate", 4, None),
                                  (1, "ffn_down", 5, 1)])
    tensors = overlay.lora_tensors(gate_up_fused=True)
    assert sorted(tensors) == [(1, "ffn_down"), (2, "ffn_up"), (3, "ffn_up")]
    for layer in (2, 3):
        lora_a, lora_b = tensors[layer, "ffn_up"]
        assert lora_b.shape == (2 * N_FF, lora_a.shape[0])
        assert np.array_equal(lora_b @ lora_a, np.concatenate(
            [overlay.dense_delta(layer, "ffn_gate"), overlay.dense_delta(layer, "ffn_up")]))
    assert tensors[2, "ffn_up"][0].shape[0] == 11
    assert np.array_equal(tensors[1, "ffn_down"][0], overlay.lora_tensors()[1, "ffn_down"][0])


def test_lora_factors_reproduce_the_dense_delta_bit_for_bit(make_overlay):
    overlay = make_overlay(BASE, SPEC)
    shared = overlay.blocks[0].neurons[:2]  # a neuron two blocks both change: they add
    overlay = overlay.merge(SparseOverlay(
        [NeuronBlock(1, "ffn_down", shared, np.ones((N_EMBD, 2)), 3),
         NeuronBlock(2, "ffn_up", shared, np.ones((2, N_EMBD)), 3)], BASE,
        d_model=N_EMBD, d_ff=N_FF))
    tensors = overlay.lora_tensors()
    assert sorted(tensors) == [(1, "ffn_down"), (2, "ffn_down"), (2, "ffn_up"), (3, "ffn_gate")]
    for (layer, matrix), (lora_a, lora_b) in tensors.items():
        r = lora_a.shape[0]
        if matrix == "ffn_down":
            assert lora_a.shape == (r, N_FF) and lora_b.shape == (N_EMBD, r)
        else:
            assert lora_a.shape == (r, N_EMBD) and lora_b.shape == (N_FF, r)
        dense = overlay.dense_delta(layer, matrix)
        assert np.array_equal(lora_b @ lora_a, dense)
    assert [lora_a.shape[0] for lora_a, _ in tensors.values()] == [13, 4, 18, 5]
    down = overlay.dense_delta(1, "ffn_down")
    first, extra = overlay.blocks[0], overlay.blocks[-2]
    assert np.array_equal(down[:, shared], first.delta[:, :2] + extra.delta)
    changed = np.concatenate([b.neurons for b in overlay.blocks
                              if (b.layer, b.matrix) == (1, "ffn_down")])
    assert not np.delete(down, changed, axis=1).any()


def test_sizes_norms_sessions_and_forgetting_a_session(make_overlay):
    overlay = make_overlay(BASE, SPEC)
    assert overlay.trainable_params == N_EMBD * (8 + 3 + 16 + 4 + 5)
    assert overlay.nbytes == overlay.trainable_params * 4 + (8 + 3 + 16 + 4 + 5) * 8
    assert overlay.sessions == [1, 2] and overlay.layers == [1, 2, 3]
    assert overlay.matrices == ["ffn_down", "ffn_up", "ffn_gate"]

    norms = overlay.neuron_norms()
    neurons, values = norms[1, "ffn_down"]
    dense = overlay.dense_delta(1, "ffn_down")
    assert np.allclose(values, np.linalg.norm(dense[:, neurons], axis=0))
    layer_norms = overlay.layer_norms()
    expected = np.sqrt(sum(np.sum(overlay.dense_delta(2, m).astype(np.float64) ** 2)
                           for m in ov.MATRICES))
    assert layer_norms[2] == pytest.approx(expected) and list(layer_norms) == [1, 2, 3]

    forgotten = overlay.without_session(1)
    assert forgotten.sessions == [2] and len(forgotten.blocks) == len(overlay.blocks) - 1
    assert np.array_equal(forgotten.dense_delta(1, "ffn_down"),
                          overlay.dense_delta(1, "ffn_down") - SparseOverlay(
                              overlay.blocks[:1], BASE, d_model=N_EMBD, d_ff=N_FF
                          ).dense_delta(1, "ffn_down"))
    assert np.array_equal(forgotten.dense_delta(2, "ffn_up"), overlay.dense_delta(2, "ffn_up"))
    assert overlay.without_session(99).trainable_params == overlay.trainable_params


def test_taking_a_session_s_neurons_out_zeroes_their_change_and_keeps_the_rest_exact(
        make_overlay):
    """An earlier session's neurons that leak are taken out of it (``learning.trims``): their
    columns and rows of ΔW become zero in every matrix of their layer, another session's
    change of the same neuron stays, nothing else moves, and a block left with no neuron is
    gone."""
    overlay = make_overlay(BASE, SPEC)
    first, second = overlay.blocks[0], overlay.blocks[1]  # layer 1's ffn_down: sessions 1, 2
    shared = int(second.neurons[0])  # session 2 changes it too, from now on
    first.neurons[0] = shared
    out = {1: {shared, *first.neurons[1:3].tolist()}}
    trimmed = overlay.without_neurons(1, out)
    assert trimmed.sessions == overlay.sessions
    gone = sorted(out[1])
    kept = SparseOverlay(trimmed.blocks[:1], BASE, d_model=N_EMBD, d_ff=N_FF)
    assert not kept.dense_delta(1, "ffn_down")[:, gone].any()
    assert np.array_equal(trimmed.blocks[1].delta, second.delta)  # session 2's, untouched
    after, before = trimmed.dense_delta(1, "ffn_down"), overlay.dense_delta(1, "ffn_down")
    assert np.array_equal(np.delete(after, gone, axis=1), np.delete(before, gone, axis=1))
    for layer, matrix in ((2, "ffn_up"), (2, "ffn_down"), (3, "ffn_gate")):
        assert np.array_equal(trimmed.dense_delta(layer, matrix),
                              overlay.dense_delta(layer, matrix))
    assert trimmed.trainable_params == overlay.trainable_params - N_EMBD * 3
    whole = overlay.without_neurons(None, {3: set(overlay.blocks[-1].neurons.tolist())})
    assert 3 not in whole.layers  # the shared block's every neuron: the block is gone
    assert overlay.without_neurons(1, {}).blocks == overlay.blocks


@pytest.mark.parametrize("make, message", [
    (lambda: NeuronBlock(0, "attn_q", [1], np.zeros((1, N_EMBD))), "matrix must be"),
    (lambda: NeuronBlock(0, "ffn_down", [1, 2], np.zeros((2, N_EMBD))), "do not fit"),
    (lambda: NeuronBlock(0, "ffn_up", [1], np.full((1, N_EMBD), np.nan)), "NaN"),
    (lambda: SparseOverlay([NeuronBlock(0, "ffn_up", [N_FF], np.zeros((1, N_EMBD)))], BASE,
                           d_model=N_EMBD, d_ff=N_FF), "outside"),
    (lambda: SparseOverlay([NeuronBlock(0, "ffn_up", [1], np.zeros((1, 3)))], BASE,
                           d_model=N_EMBD, d_ff=N_FF), "d_model"),
])
def test_malformed_blocks_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_merge_refuses_another_base_or_scale(make_overlay):
    with pytest.raises(ValueError, match="different base"):
        make_overlay(BASE, SPEC).merge(make_overlay("c" * 64, SPEC))
    with pytest.raises(ValueError, match="different base"):
        make_overlay(BASE, SPEC).merge(make_overlay(BASE, SPEC, scale=0.5))


def test_gguf_export_is_an_adapter_llama_cpp_reads(tmp_path, make_overlay):
    path = ov.write_gguf_lora(make_overlay(BASE, SPEC), tmp_path / "a.gguf", "gemma3")
    reader = gguf.GGUFReader(path)
    kv = {name: field.contents() for name, field in reader.fields.items()}
    assert kv["general.type"] == "adapter" and kv["general.architecture"] == "gemma3"
    assert kv["adapter.type"] == "lora" and kv["adapter.lora.alpha"] == 0.0
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}  # ggml order
    assert shapes["blk.1.ffn_down.weight.lora_a"] == (N_FF, 11)
    assert shapes["blk.1.ffn_down.weight.lora_b"] == (11, N_EMBD)
    assert shapes["blk.2.ffn_up.weight.lora_a"] == (N_EMBD, 16)
    assert shapes["blk.2.ffn_up.weight.lora_b"] == (16, N_FF)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf"]


def _logits(model, adapter_path=None, scale=1.0):
    llm = llama_cpp.Llama(str(model), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    adapter = llama_native.lora_load(llm, adapter_path) if adapter_path else None
    if adapter:
        llama_native.lora_set(llm, [adapter], [scale])
    llm.eval(TOKENS)
    return llm, adapter, np.array(llm.scores[:len(TOKENS)])


@pytest.mark.parametrize("tiny_model", ARCHITECTURES, indirect=True)
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_applied_lora_matches_a_dense_merged_model(tmp_path, tiny_model, make_overlay,
                                                    merged_model, scale):
    """The overlay in llama.cpp (base + s·B·A at run time) vs W + s·ΔW baked into a copy."""
    overlay = make_overlay(BASE, SPEC, scale=scale)
    arch = open_model(tiny_model).architecture
    adapter_path = ov.write_gguf_lora(overlay, tmp_path / "lora.gguf", arch)
    llm, adapter, with_lora = _logits(tiny_model, adapter_path, overlay.scale)
    _, _, merged = _logits(merged_model(overlay, tmp_path / "merged.gguf"))
    _, _, base = _logits(tiny_model)

    diff = np.abs(with_lora - merged).max()
    print(f"{arch} scale {scale}: max |logit diff| lora vs merged {diff:.2e}, "
          f"lora vs base {np.abs(with_lora - base).max():.2f}")
    assert diff < 1e-4 * np.abs(merged).max()  # float32 rounding only
    assert np.abs(with_lora - base).max() > 1
    assert np.array_equal(with_lora.argmax(axis=1), merged.argmax(axis=1))

    llama_native.lora_set(llm, [], [])  # cleared: the base model exactly
    llm.reset()
    llama_native.clear_kv(llm)
    llm.eval(TOKENS)
    assert np.array_equal(np.array(llm.scores[:len(TOKENS)]), base)
    llama_native.lora_free(adapter)
    llm.close()


def test_empty_overlay_exports_and_leaves_the_model_unchanged(tmp_path, tiny_model):
    empty = SparseOverlay([], BASE, d_model=N_EMBD, d_ff=N_FF)
    path = ov.write_gguf_lora(empty, tmp_path / "empty.gguf", "gemma3")
    llm, adapter, logits = _logits(tiny_model, path)
    assert np.array_equal(logits, _logits(tiny_model)[2])
    llama_native.lora_free(adapter)
    llm.close()


# -- files ------------------------------------------------------------------------------


def test_save_and_load_round_trip_with_a_complete_manifest(tmp_path, make_overlay):
    overlay = make_overlay(BASE, SPEC, scale=0.75)
    manifest = ov.save(overlay, tmp_path / "v1", parent_version=4, metrics={"recall": 0.9})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["manifest.json",
                                                                   "overlay.safetensors"]
    assert stat.S_IMODE((tmp_path / "v1").stat().st_mode) == 0o700  # learned facts are private
    raw = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert raw["format"] == "engram-overlay" and raw["format_version"] == 2
    assert raw == ov.sealed_manifest(raw)  # carries its own checksum
    assert raw["base_sha256"] == BASE and raw["scale"] == 0.75 and raw["parent_version"] == 4
    assert raw["sessions"] == [1, 2] and raw["metrics"] == {"recall": 0.9}
    assert raw["layers"] == [1, 2, 3] and raw["matrices"] == ["ffn_down", "ffn_up", "ffn_gate"]
    assert raw["blocks"][0]["neurons"] == overlay.blocks[0].neurons.tolist()
    assert raw["created_at"] and raw["safetensors_sha256"] == manifest.safetensors_sha256

    loaded = ov.load(tmp_path / "v1", BASE)
    assert (loaded.scale, loaded.d_model, loaded.d_ff) == (0.75, N_EMBD, N_FF)
    assert loaded.sessions == [1, 2]
    for a, b in zip(loaded.blocks, overlay.blocks, strict=True):
        assert (a.layer, a.matrix, a.session_id) == (b.layer, b.matrix, b.session_id)
        assert np.array_equal(a.neurons, b.neurons) and np.array_equal(a.delta, b.delta)

    with pytest.raises(FileExistsError):
        ov.save(overlay, tmp_path / "v1")


def test_unserialisable_metrics_fail_before_any_file_is_written(tmp_path, make_overlay):
    with pytest.raises(TypeError):
        ov.save(make_overlay(BASE, SPEC), tmp_path / "v1", metrics={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_a_crash_while_writing_leaves_nothing(tmp_path, make_overlay, monkeypatch):
    def half_then_crash(path, data):
        path.write_bytes(data[: len(data) // 2])
        raise OSError("disk pulled out")

    monkeypatch.setattr(ov, "_write", half_then_crash)
    with pytest.raises(OSError):
        ov.save(make_overlay(BASE, SPEC), tmp_path / "v1")
    assert list(tmp_path.iterdir()) == []


def _flip(path, offset=-10):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _edit_manifest(directory, change):
    """A manifest that says something else, sealed as if Engram wrote it."""
    raw = json.loads((directory / "manifest.json").read_text())
    change(raw)
    (directory / "manifest.json").write_text(json.dumps(ov.sealed_manifest(raw)))


def _flip_scale(directory):
    """One bit: the scale 0.75 read as 0.74 (accepted before manifests had a checksum)."""
    path = directory / "manifest.json"
    path.write_text(path.read_text().replace('"scale": 0.75', '"scale": 0.74'))


@pytest.mark.parametrize("damage, message", [
    (lambda d: _flip(d / "overlay.safetensors"), "checksum"),
    (lambda d: _truncate(d / "overlay.safetensors"), "checksum"),
    (lambda d: (d / "overlay.safetensors").unlink(), "missing"),
    (lambda d: _truncate(d / "manifest.json"), "unreadable manifest"),
    (lambda d: (d / "manifest.json").unlink(), "unreadable manifest"),
    (lambda d: _edit_manifest(d, lambda m: m.update(format_version=99)), "format version 99"),
    (_flip_scale, "does not match its checksum"),
    (lambda d: _edit_manifest(d, lambda m: m["blocks"][0].update(delta_shape=[N_EMBD, 9])),
     "does not match the manifest"),
    (lambda d: _edit_manifest(d, lambda m: m["blocks"][1].update(layer=7)), "inconsistent"),
    # Sealed lies about types: {} was read as no blocks, a number as the base raised TypeError.
    (lambda d: _edit_manifest(d, lambda m: m.update(blocks={})), "blocks has the wrong type"),
    (lambda d: _edit_manifest(d, lambda m: m.update(base_sha256=7)), "base_sha256 has the wrong"),
    (lambda d: _edit_manifest(d, lambda m: m.update(scale=True)), "scale has the wrong type"),
    (lambda d: _edit_manifest(d, lambda m: m["blocks"][0].update(session_id="1")),
     "block 0: session_id has the wrong type"),
    (lambda d: _edit_manifest(d, lambda m: m["blocks"].pop()), "names no block for blk."),
])
def test_damaged_overlays_are_refused_with_a_clear_error(tmp_path, make_overlay, damage, message):
    ov.save(make_overlay(BASE, SPEC, scale=0.75), tmp_path / "v1")
    damage(tmp_path / "v1")
    with pytest.raises(CorruptOverlay, match=message) as caught:
        ov.load(tmp_path / "v1", BASE)
    assert isinstance(caught.value, OverlayError) and isinstance(caught.value, EngramError)
    assert "v1" in str(caught.value)


def test_a_manifest_from_before_checksums_still_loads(tmp_path, make_overlay):
    """Format 1 manifests had no checksum of their own: learned versions stay usable."""
    ov.save(make_overlay(BASE, SPEC), tmp_path / "v1")
    path = tmp_path / "v1" / "manifest.json"
    raw = json.loads(path.read_text())
    del raw["manifest_sha256"]
    path.write_text(json.dumps(raw | {"format_version": 1}))
    assert ov.load(tmp_path / "v1", BASE).sessions == [1, 2]
    path.write_text(json.dumps(raw))  # format 2 without its checksum: damaged
    with pytest.raises(CorruptOverlay, match="does not match its checksum"):
        ov.load(tmp_path / "v1", BASE)


def test_foreign_overlay_is_refused(tmp_path, make_overlay):
    ov.save(make_overlay(BASE, SPEC), tmp_path / "v1")
    with pytest.raises(ForeignOverlay, match="another base model"):
        ov.load(tmp_path / "v1", "c" * 64)
