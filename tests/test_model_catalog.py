"""Finding the models a user already has: fake Ollama, LM Studio, Hugging Face and llama.cpp
layouts in a temp home, read the way `engram models` reads them."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from engine.errors import ModelError
from engine.model_catalog import find, listing, resolve
from tests.test_cli import engram
from tests.tiny_gguf import HEAD_DIM, N_EMBD, N_FF, N_HEAD, N_KV, N_LAYER, vocab, write_tiny_model

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture
def machine(tmp_path, monkeypatch, tiny_model):
    """A home with one model in each place, and the file each name should resolve to."""
    home = tmp_path / "home"
    for name in ("OLLAMA_MODELS", "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llama-cache"))

    ollama = home / ".ollama" / "models"
    blob = write_tiny_model(tmp_path / "ollama.gguf", chat_template=TEMPLATE)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    (ollama / "blobs").mkdir(parents=True)
    shutil.move(blob, ollama / "blobs" / f"sha256-{digest}")
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "qwen3" / "4b"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00"}]}))

    studio = home / ".lmstudio" / "models" / "lmstudio-community" / "Tiny-GGUF"
    studio.mkdir(parents=True)
    shutil.copy(tiny_model, studio / "Tiny-F32.gguf")
    shutil.copy(tiny_model, studio / "Big-00001-of-00002.gguf")
    shutil.copy(tiny_model, studio / "Big-00002-of-00002.gguf")  # only the first shard opens
    (studio / "broken.gguf").write_text("not a model")

    repo = home / ".cache" / "huggingface" / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    shutil.copy(tiny_model, repo / "blobs" / "abc")
    (repo / "snapshots" / "rev1").mkdir(parents=True)
    (repo / "snapshots" / "rev1" / "tiny.gguf").symlink_to(repo / "blobs" / "abc")

    (tmp_path / "llama-cache").mkdir()
    shutil.copy(tiny_model, tmp_path / "llama-cache" / "org_tiny.gguf")
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(tiny_model, mine / "own.gguf")
    return {"qwen3:4b": ollama / "blobs" / f"sha256-{digest}",
            "lmstudio-community/Tiny-GGUF/Tiny-F32": studio / "Tiny-F32.gguf",
            "lmstudio-community/Tiny-GGUF/Big-00001-of-00002": studio / "Big-00001-of-00002.gguf",
            "org/tiny/tiny": repo / "snapshots" / "rev1" / "tiny.gguf",
            "org_tiny": tmp_path / "llama-cache" / "org_tiny.gguf",
            "own": mine / "own.gguf"}, mine


def test_every_place_is_found_by_name(machine):
    expected, mine = machine
    broken = expected["lmstudio-community/Tiny-GGUF/Tiny-F32"].with_name("broken.gguf")
    assert {f.name: f.path for f in find([mine])} == {
        **expected, "lmstudio-community/Tiny-GGUF/broken": broken}  # finding opens no file
    assert {f.name: f.source for f in find([mine])}["qwen3:4b"] == "ollama"


def test_listing_reads_the_header(machine):
    expected, mine = machine
    models = {m.name: m for m in listing([mine])}
    assert set(models) == set(expected)  # broken.gguf is left out, not an error
    ollama, studio = models["qwen3:4b"], models["lmstudio-community/Tiny-GGUF/Tiny-F32"]
    assert ollama.chat_template and not studio.chat_template
    per_layer = (2 * N_EMBD * N_HEAD * HEAD_DIM + 2 * N_EMBD * N_KV * HEAD_DIM + 3 * N_FF * N_EMBD
                 + 4 * N_EMBD + 2 * HEAD_DIM)
    assert studio.parameters == len(vocab()[0]) * N_EMBD + N_EMBD + N_LAYER * per_layer
    assert (studio.architecture, studio.quantisation) == ("gemma3", "F32")
    assert studio.context_length == 512
    assert studio.learnable and studio.size == expected[studio.name].stat().st_size


def test_names_resolve_and_unknown_names_say_where_to_look(machine):
    expected, mine = machine
    assert resolve("qwen3:4b") == expected["qwen3:4b"]
    assert resolve("own", [mine]) == expected["own"]
    with pytest.raises(ModelError, match="engram models"):
        resolve("llama3:70b")


def test_cli_lists_and_chats_with_a_listed_name(machine, engine_home):
    listed = engram("models", "--json", home=engine_home)
    assert listed.returncode == 0, listed.stderr.decode()
    assert {m["name"] for m in json.loads(listed.stdout)} == set(machine[0]) - {"own"}
    out = engram("chat", "--plain", "--model", "qwen3:4b", stdin=b"hello\n", home=engine_home)
    assert out.returncode == 0, out.stderr.decode()
    out = engram("chat", "--plain", "--model", "nosuch:1b", home=engine_home)
    err = out.stderr.decode()
    assert out.returncode == 2 and "engram models" in err and len(err.splitlines()) == 1
