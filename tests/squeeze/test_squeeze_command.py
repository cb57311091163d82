"""``run_squeeze``: the table, the compressed adapter, ``squeeze.json`` and its place, the
docs' example config; and ``tinker://`` paths as far as they go offline (the key, the
checkpoint kinds, the cache and archive unpacking)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from squeeze_helpers import PREFIX, known_factors, read_factors, write_adapter

from retrain.commands.squeeze import extract_adapter_archive, fetch_tinker_adapter, local_adapter_folder, \
    run_squeeze, unpack_downloads
from retrain.config.loader import load_config
from retrain.config.schema import Config, SqueezeConfig
from retrain.errors import ConfigError
from retrain.squeeze import SqueezeError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "squeeze.md"
NAME = "model.layers.0.self_attn.q_proj"


def adapter(folder: Path) -> Path:
    # s = (4, 2, 1, 1): V(1) = 16/22, V(2) = 20/22 = 0.909, V(4) = 21/22 ... 1 -> rank 4 at 0.95
    return write_adapter(folder, {NAME: known_factors(16, 12, (4.0, 2.0, 1.0, 1.0), scale=2.0)}, r=4, lora_alpha=8)


def squeeze_config(**settings: object) -> Config:
    return dataclasses.replace(Config(), squeeze=SqueezeConfig(**settings))  # type: ignore[arg-type]


def test_analysis_only_prints_the_table_and_writes_squeeze_json_beside_the_adapter(tmp_path: Path) -> None:
    adapter(tmp_path / "run" / "final")
    out = io.StringIO()
    summary = run_squeeze(squeeze_config(adapter_path=str(tmp_path / "run" / "final"), min_variance_retention=0.9),
                          out)
    assert "<- recommended" in out.getvalue() and summary["recommended_rank"] == 2
    assert summary["compressed_path"] is None and "layers" not in summary
    report = json.loads((tmp_path / "run" / "squeeze.json").read_text())
    assert report["report_path"] == str(tmp_path / "run" / "squeeze.json") == summary["report_path"]
    assert report["layers"][0]["name"] == PREFIX + NAME
    assert report["layers"][0]["singular_values"] == pytest.approx([4.0, 2.0, 1.0, 1.0], abs=1e-5)
    assert json.loads(json.dumps(summary)) == summary


def test_compression_writes_the_adapter_and_squeeze_json_next_to_it(tmp_path: Path) -> None:
    adapter(tmp_path / "final")
    summary = run_squeeze(squeeze_config(adapter_path=str(tmp_path / "final"), output_path=str(tmp_path / "out" / "r2"),
                                         compress_to=2), io.StringIO())
    assert summary["compressed_path"] == str(tmp_path / "out" / "r2") and summary["compressed_rank"] == 2
    assert read_factors(tmp_path / "out" / "r2")[0]["r"] == 2
    report = json.loads((tmp_path / "out" / "squeeze.json").read_text())
    assert report["compressed_path"] == summary["compressed_path"] and not (tmp_path / "squeeze.json").exists()


def test_compress_to_zero_takes_the_recommended_rank(tmp_path: Path) -> None:
    adapter(tmp_path / "final")
    summary = run_squeeze(squeeze_config(adapter_path=str(tmp_path / "final"), output_path=str(tmp_path / "out"),
                                         min_variance_retention=0.7), io.StringIO())
    # V(1) = 16/22 = 0.727 >= 0.7
    assert summary["recommended_rank"] == summary["compressed_rank"] == 1


def test_user_errors_are_config_errors_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[squeeze\]\.adapter_path: is empty"):
        run_squeeze(squeeze_config(), io.StringIO())
    adapter(tmp_path / "final")
    with pytest.raises(ConfigError, match=r"\[squeeze\]\.compress_to: is 5"):
        run_squeeze(squeeze_config(adapter_path=str(tmp_path / "final"), output_path=str(tmp_path / "out"),
                                   compress_to=5), io.StringIO())
    with pytest.raises(ConfigError, match=r"\[squeeze\]\.compress_to: a compression rank is set"):
        run_squeeze(squeeze_config(adapter_path=str(tmp_path / "final"), compress_to=2), io.StringIO())
    assert not (tmp_path / "squeeze.json").exists()


def test_the_docs_example_config_loads_and_runs(tmp_path: Path) -> None:
    block = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert block is not None
    (tmp_path / "squeeze.toml").write_text(block.group(1))
    config = load_config(tmp_path / "squeeze.toml", refuse_unavailable=False)
    assert config.squeeze.adapter_path and config.squeeze.output_path
    adapter(tmp_path / "final")
    settings = dataclasses.replace(config.squeeze, adapter_path=str(tmp_path / "final"),
                                   output_path=str(tmp_path / "squeezed"))
    summary = run_squeeze(dataclasses.replace(config, squeeze=settings), io.StringIO())
    assert summary["compressed_rank"] == summary["recommended_rank"]


def test_a_tinker_path_without_a_key_names_tinker_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with pytest.raises(SqueezeError, match="TINKER_API_KEY"):
        fetch_tinker_adapter("tinker://run-1/external_weights/final", cache_dir=tmp_path)
    assert not (tmp_path / "tinker" / "run-1_external_weights_final").exists()


def test_tinker_training_and_sampler_checkpoints_and_bad_paths_are_explained(tmp_path: Path) -> None:
    for path, kind in (("tinker://run-1/weights/final", "training"), ("tinker://run-1/sampler_weights/7", "sampler")):
        with pytest.raises(SqueezeError, match=f"Tinker {kind} checkpoint.*tinker checkpoint download"):
            local_adapter_folder(path, api_key="key", cache_dir=tmp_path)
    with pytest.raises(SqueezeError, match="not a Tinker checkpoint path"):
        local_adapter_folder("tinker://run-1/final", cache_dir=tmp_path)


def test_a_fetched_tinker_adapter_is_reused_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    cached = adapter(tmp_path / "tinker" / "run-1_external_weights_final" / "adapter")
    assert fetch_tinker_adapter("tinker://run-1/external_weights/final", cache_dir=tmp_path) == cached


def pack(archive: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(archive, "w:gz") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))


def test_a_downloaded_archive_is_unpacked_to_the_adapter_folder(tmp_path: Path) -> None:
    source = adapter(tmp_path / "source")
    members = {f"checkpoint/{item.name}": item.read_bytes() for item in source.iterdir()}
    (tmp_path / "download").mkdir()
    pack(tmp_path / "download" / "weights.tar.gz", members)
    found = unpack_downloads(tmp_path / "download")
    assert found == tmp_path / "download" / "checkpoint" and not (tmp_path / "download" / "weights.tar.gz").exists()
    assert read_factors(found)[0]["r"] == 4


def test_archive_members_outside_the_folder_are_refused(tmp_path: Path) -> None:
    pack(tmp_path / "evil.tar.gz", {"../escaped.txt": b"x"})
    (tmp_path / "into").mkdir()
    with pytest.raises(SqueezeError, match="cannot unpack the adapter archive evil.tar.gz"):
        extract_adapter_archive(tmp_path / "evil.tar.gz", tmp_path / "into")
    assert not (tmp_path / "escaped.txt").exists()


@dataclasses.dataclass
class FakeUrls:
    urls: dict[str, str]


@dataclasses.dataclass
class FakeWeightsClient:
    """Tinker's answer to get_external_weights_urls, with file:// links to local files."""

    urls: dict[str, str]
    asked: list[str] = dataclasses.field(default_factory=list)

    def get_external_weights_urls(self, tinker_path: str) -> FakeWeightsClient:
        self.asked.append(tinker_path)
        return self

    def result(self, timeout: float | None = None) -> FakeUrls:
        assert timeout == 5.0
        return FakeUrls(self.urls)


def test_a_tinker_checkpoint_is_downloaded_unpacked_and_cached(tmp_path: Path) -> None:
    source = adapter(tmp_path / "source")
    pack(tmp_path / "weights.tar.gz", {f"final/{item.name}": item.read_bytes() for item in source.iterdir()})
    (tmp_path / "README.md").write_text("about")
    client = FakeWeightsClient({"weights.tar.gz": (tmp_path / "weights.tar.gz").as_uri(),
                                "final/README.md": (tmp_path / "README.md").as_uri()})
    path = "tinker://run-2/external_weights/final"
    folder = fetch_tinker_adapter(path, cache_dir=tmp_path / "cache", timeout_s=5.0, client=client)
    assert folder == tmp_path / "cache" / "tinker" / "run-2_external_weights_final" / "adapter"
    assert sorted(item.name for item in folder.iterdir()) == ["README.md", "adapter_config.json",
                                                              "adapter_model.safetensors"]
    assert sorted(item.name for item in folder.parent.iterdir()) == ["adapter"]  # no download folder left
    assert fetch_tinker_adapter(path, cache_dir=tmp_path / "cache", timeout_s=5.0, client=client) == folder
    assert client.asked == [path]


def test_a_failed_tinker_download_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    client = FakeWeightsClient({"adapter_config.json": (tmp_path / "missing.json").as_uri()})
    with pytest.raises(SqueezeError, match="downloading adapter_config.json of a Tinker checkpoint failed"):
        fetch_tinker_adapter("tinker://run-3/external_weights/x", cache_dir=tmp_path, timeout_s=5.0, client=client)
    assert list((tmp_path / "tinker" / "run-3_external_weights_x").iterdir()) == []
    escape = FakeWeightsClient({"../../outside.json": (tmp_path / "missing.json").as_uri()})
    with pytest.raises(SqueezeError, match="would land outside its folder"):
        fetch_tinker_adapter("tinker://run-3/external_weights/x", cache_dir=tmp_path, timeout_s=5.0, client=escape)


def test_downloads_without_an_adapter_config_are_explained(tmp_path: Path) -> None:
    (tmp_path / "download").mkdir()
    (tmp_path / "download" / "adapter_model.safetensors.age").write_bytes(b"age")
    with pytest.raises(SqueezeError, match="age-encrypted"):
        unpack_downloads(tmp_path / "download")


def test_a_squeeze_toml_runs_through_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    adapter(tmp_path / "adapter")
    (tmp_path / "squeeze.toml").write_text('[squeeze]\nadapter_path = "adapter"\nmin_variance_retention = 0.9\n'
                                          'output_path = "small"\n')
    result = subprocess.run([sys.executable, "-m", "retrain", "squeeze.toml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "<- recommended" in result.stdout and "recommended rank 2" in result.stdout
    config, _ = read_factors(tmp_path / "small")
    assert config["r"] == 2  # V(2) = 20/22 >= 0.9
    assert json.loads((tmp_path / "squeeze.json").read_text())["recommended_rank"] == 2
    assert not (tmp_path / "logs").exists()  # no training run
