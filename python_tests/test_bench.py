"""The benchmark CLI end to end on the tiny preset: outputs exist and every check passed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
pytest.importorskip("scipy")

from jaxcsb.bench import __main__ as cli  # noqa: E402
from jaxcsb.bench import matrices, presets, products  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--preset", "tiny", "--out", str(out), "--no-progress", "--no-ceilings"]
    return out, argv


def test_tiny_preset_writes_json_table_and_plot(tiny_run, capsys):
    out, argv = tiny_run
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    backend = json.loads(next(out.glob("bench-*.json")).read_text())["meta"]["backend"]
    data = json.loads((out / f"bench-{backend}.json").read_text())
    assert (out / f"bench-{backend}.png").stat().st_size > 0

    # The table is the last thing printed: its legend line ends the output.
    assert printed.rstrip().splitlines()[-1].startswith("peer cells:")
    assert "jaxcsb ms" in printed

    expected = sum(
        len(g.kinds)
        * len(g.shapes)
        * len(g.sparsities)
        * len(g.ns)
        * len(g.dtypes)
        * len(g.products)
        for g in presets.PRESETS["tiny"]
    )
    records = data["results"]
    assert len(records) == expected
    assert {r["product"] for r in records} == set(products.PRODUCTS)
    for r in records:
        mine = r["peers"]["jaxcsb"]
        assert mine["status"] == "ok", (r["matrix"], r["product"], mine)
        assert mine["rel_err"] <= mine["tolerance"]
        assert mine["ms"] > 0 and math.isfinite(mine["tflops"]) and mine["gbps"] > 0
        for name, peer in r["peers"].items():
            # Peers may be unavailable or lack a product, but none may fail its check.
            assert peer["status"] in ("ok", "n/a", "skipped"), (name, r["product"], peer)
            if peer["status"] == "ok" and name != "jaxcsb":
                assert peer["speedup"] == pytest.approx(peer["ms"] / mine["ms"])
    transposed = [r for r in records if r["product"] in ("spmm_t", "xw")]
    assert transposed and all(r["t_over_fwd"] > 0 for r in transposed if "t_over_fwd" in r)
    assert data["targets"] and data["targets"][0]["verdict"] == "info"


def test_block_size_option_sets_jaxcsb_block_size(tmp_path):
    argv = ["--shapes", "70x90", "--n", "5", "--products", "spmm,sddmm", "--peers", "jaxcsb"]
    argv += ["--block-size", "32", "--out", str(tmp_path), "--no-progress", "--no-ceilings"]
    assert cli.main(argv) == 0
    payload = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    peers = [r["peers"]["jaxcsb"] for r in payload["results"]]
    assert len(peers) == 2
    assert all(p["status"] == "ok" and p["block_size"] == 32 for p in peers)
    assert payload["meta"]["timing"]["block_size"] == 32


def test_block_size_option_rejects_a_size_jaxcsb_lacks(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--preset", "tiny", "--block-size", "48"])
    assert "--block-size: invalid choice: 48" in capsys.readouterr().err


def test_cli_refuses_a_gpu_without_the_cuda_kernels(monkeypatch, capsys):
    # Timing the pure-JAX fallback on a GPU would report its times as jaxcsb's.
    monkeypatch.setattr(cli.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(cli.jaxcsb, "native_platforms", lambda: frozenset({"cpu"}))
    with pytest.raises(SystemExit):
        cli.main(["--preset", "tiny"])
    assert "CUDA kernels are not available" in capsys.readouterr().err


def test_cli_rejects_preset_with_sweep_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--preset", "tiny", "--shapes", "64x64"])
    assert "either --preset or sweep options" in capsys.readouterr().err


@pytest.mark.parametrize("kind", matrices.SYNTHETIC_KINDS)
def test_synthetic_matrices_have_requested_sparsity(kind):
    m = matrices.synthetic(kind, (300, 200), 0.9, seed=3)
    assert m.shape == (300, 200)
    assert abs(m.sparsity - 0.9) < 0.01
    linear = m.row * 200 + m.col
    assert np.all(np.diff(linear) > 0), "row-major sorted, no duplicates"


def test_skewed_matrix_has_heavy_and_light_rows():
    m = matrices.synthetic("skewed", (640, 256), 0.95, seed=0)
    per_row = np.bincount(m.row, minlength=640)
    heavy = np.sort(per_row)[-10:]  # 640 // 64 heavy rows
    # Half of the nonzeros, or as many as full rows can hold (here: all 10 rows full).
    assert heavy.sum() >= min(0.45 * m.nnz, 0.95 * heavy.size * 256)
    assert np.median(per_row) < 0.05 * 256
    m = matrices.synthetic("skewed", (640, 256), 0.995, seed=0)
    per_row = np.bincount(m.row, minlength=640)
    assert np.sort(per_row)[-10:].sum() >= 0.45 * m.nnz


def test_dlmc_rn50_n_is_per_image_times_images(tmp_path):
    (tmp_path / "rn50").mkdir()
    (tmp_path / "rn50_batchsizes.txt").write_text("layer_a,49\n")
    (tmp_path / "rn50" / "layer_a.smtx").write_text("3, 4, 3\n0 1 2 3\n2 0 3\n")
    (tmp_path / "rn50" / "other.smtx").write_text("2, 2, 1\n0 1 1\n1\n")
    files = matrices.dlmc_files(tmp_path)
    assert [f.name for f in files] == ["layer_a.smtx", "other.smtx"]
    a = matrices.load_dlmc(files[0], tmp_path)
    assert a.model == "rn50" and a.per_image_n == 49 and a.nnz == 3
    np.testing.assert_array_equal(a.col, [2, 0, 3])
    assert matrices.dlmc_ns(a.per_image_n, (2048,), (1, 32)) == [49, 49 * 32]
    b = matrices.load_dlmc(files[1], tmp_path)
    assert b.per_image_n is None
    assert matrices.dlmc_ns(b.per_image_n, (2048,), (1, 32)) == [2048]


def test_dlmc_filter_narrows_a_presets_dlmc_groups_only():
    from jaxcsb.bench.__main__ import narrow_dlmc
    from jaxcsb.bench.presets import check_preset

    groups = check_preset("gpu-targets")
    narrowed = narrow_dlmc(groups, ("0.95",))
    for before, after in zip(groups, narrowed, strict=True):
        if before.dlmc is None:
            assert after == before
        else:
            assert after.dlmc == (*before.dlmc, "0.95")
    assert any(g.dlmc is not None for g in narrowed)
    assert narrow_dlmc(groups, ()) == tuple(groups)
