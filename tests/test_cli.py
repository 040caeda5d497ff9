from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

import voxgate
from voxgate.cli import main


def _vol(tmp_path: Path) -> voxgate.Volume:
    v = voxgate.create(f"zarr://{tmp_path}/a.zarr", shape=(8, 16, 24), chunks=(4, 8, 8),
                       dtype="uint16", voxel_size=(40, 8, 8), num_scales=2, kind="image")
    v[:] = np.arange(8 * 16 * 24, dtype=np.uint16).reshape(8, 16, 24)
    return v


def test_info(tmp_path: Path) -> None:
    _vol(tmp_path)
    res = CliRunner().invoke(main, ["info", str(tmp_path / "a.zarr")])
    assert res.exit_code == 0, res.output
    assert "uint16" in res.output and "8 x 16 x 24" in res.output and "40 x 8 x 8 nm" in res.output
    res = CliRunner().invoke(main, ["info", "--json", f"zarr://{tmp_path}/a.zarr"])
    out = json.loads(res.output)
    assert out["scales"][1]["shape_zyx"] == [8, 8, 12]
    assert out["scales"][1]["voxel_size_zyx"] == [40.0, 16.0, 16.0]


def test_info_check(tmp_path: Path) -> None:
    v = _vol(tmp_path)  # scale 0 written whole, scale 1 laid out and never written
    res = CliRunner().invoke(main, ["info", "--check", v.url])
    assert res.exit_code == 0, res.output
    assert "uint16" in res.output  # the usual description comes first
    assert "check: 0 chunk(s)" not in res.output and "absent at scale 0" not in res.output
    n1 = len(v.at_scale(1).missing_chunks())
    assert n1 > 0 and f"check: {n1} chunk(s) absent at scale 1" in res.output
    res = CliRunner().invoke(main, ["info", "--check", "--json", v.url])
    out = json.loads(res.output)
    assert out["absent_chunks"]["0"] == {"total": 0, "first_zyx": []}
    assert out["absent_chunks"]["1"]["total"] == n1
    assert "absent_chunks" not in json.loads(
        CliRunner().invoke(main, ["info", "--json", v.url]).output)
    res = CliRunner().invoke(main, ["info", "--check", "--missing", "zeros", v.url])
    assert res.exit_code == 2 and "'fill'" in res.output
    res = CliRunner().invoke(main, ["info", "--check", "--missing", "error", v.url])
    assert res.exit_code == 1 and f"MissingChunkError: {n1} chunk(s) absent" in res.output


def test_info_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["info", "nosuch://x"])
    assert res.exit_code == 1
    assert "UnknownSchemeError" in res.output and "zarr://" in res.output
    res = CliRunner().invoke(main, ["info", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "RemoteNotFoundError" in res.output


def test_cp(tmp_path: Path) -> None:
    v = _vol(tmp_path)
    res = CliRunner().invoke(main, ["cp", v.url, f"zarr://{tmp_path}/b.zarr", "--no-progress",
                                    "--scales", "0", "--box", "0:4,0:16,0:24",
                                    "-o", "zarr_format=2"])
    assert res.exit_code == 0, res.output
    assert "chunks written" in res.output
    out = voxgate.open(tmp_path / "b.zarr").read()
    expected = v.read()
    expected[4:] = 0
    np.testing.assert_array_equal(out, expected)
    assert (tmp_path / "b.zarr" / ".zgroup").exists()
    res = CliRunner().invoke(main, ["cp", v.url, f"zarr://{tmp_path}/c.zarr", "--box", "0:4"])
    assert res.exit_code != 0 and "z0:z1,y0:y1,x0:x1" in res.output


def test_demo_runs_as_installed_command(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("voxgate")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "voxgate.cli"]
    proc = subprocess.run([*cmd, "demo", "--dir", str(tmp_path / "demo"), "--size", "64"],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "equal to the original: True" in proc.stdout
    assert "equal to the original: False" not in proc.stdout
    assert f"data in {tmp_path / 'demo'}" in proc.stdout
    seg = voxgate.open(tmp_path / "demo" / "seg")
    assert seg.kind == "segmentation" and seg.dtype == np.uint64


def test_demo_without_dir_says_its_data_is_gone() -> None:
    res = CliRunner().invoke(main, ["demo", "--size", "48"])
    assert res.exit_code == 0, res.output
    assert "seg[4:8, ::2, -16:] -> (4, 24, 16)" in res.output
    assert "now removed (keep it with --dir DIR)" in res.output
    assert "data in " not in res.output
    small = CliRunner().invoke(main, ["demo", "--size", "32"])
    assert small.exit_code == 2 and "32 is not in the range x>=48" in small.output


def _seg(tmp_path: Path) -> voxgate.Volume:
    from voxgate.synthetic import synthetic_labels

    labels = synthetic_labels((16, 48, 48), cell=(8, 16, 16), seed=1)
    v = voxgate.create(f"precomputed://file://{tmp_path}/seg", shape=labels.shape,
                       chunks=(16, 32, 32), dtype="uint64", voxel_size=(40, 8, 8),
                       kind="segmentation")
    v[:] = labels
    return v


def test_service_commands(tmp_path: Path) -> None:
    seg = _seg(tmp_path)
    run = CliRunner().invoke
    res = run(main, ["mesh", seg.url, "--format", "legacy", "--obj-dir", str(tmp_path / "obj")])
    assert res.exit_code == 0, res.output
    n_ids = int(np.count_nonzero(np.unique(seg.read())))
    assert "meshes (local)" in res.output and f"wrote {n_ids} legacy meshes" in res.output
    assert len(list((tmp_path / "obj").glob("*.obj"))) == n_ids
    res = run(main, ["mesh", seg.url, "--ids", "1,2"])  # now served from the stored meshes
    assert res.exit_code == 0 and "(server)" in res.output, res.output
    res = run(main, ["skeletonize", seg.url, "--ids", "1", "--dust", "10",
                     "--swc-dir", str(tmp_path / "swc")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "swc" / "1.swc").exists()
    res = run(main, ["downsample", seg.url, "--num-scales", "2"])
    assert res.exit_code == 0, res.output
    assert "scale 1: 16 x 24 x 24" in res.output
    res = run(main, ["cc", seg.url, f"zarr://{tmp_path}/cc.zarr"])
    assert res.exit_code == 0, res.output
    assert f"{n_ids} components" in res.output
    res = run(main, ["stats", seg.url, "--csv", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "s.csv").read_text().splitlines()) == n_ids + 1


def test_service_command_errors(tmp_path: Path) -> None:
    seg = _seg(tmp_path)
    run = CliRunner().invoke
    assert run(main, ["mesh", seg.url, "--ids", "1,x"]).exit_code == 2
    res = run(main, ["cc", seg.url, f"zarr://{tmp_path}/cc.zarr", "--block", "1,2"])
    assert res.exit_code == 2 and "z,y,x" in res.output
    img = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=(4, 4, 4), chunks=(4, 4, 4),
                         dtype="uint8", voxel_size=(1, 1, 1))
    res = run(main, ["mesh", img.url, "--obj-dir", str(tmp_path / "obj")])
    assert res.exit_code == 1 and "segmentation" in res.output


def test_help_starts_without_heavy_imports() -> None:
    # `voxgate --help` must not pay for tensorstore, numpy, the HTTP stack or the Services
    code = ("import sys\n"
            "from voxgate.cli import main\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code\n"
            "heavy = ['tensorstore', 'numpy', 'httpx', 'starlette', 'uvicorn', 'zarr', 'dask',\n"
            "         'pandas', 'voxgate.api', 'voxgate.services', 'voxgate.relay']\n"
            "print('LOADED', [m for m in heavy if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Usage: " in proc.stdout and "serve" in proc.stdout
    assert "LOADED []" in proc.stdout, proc.stdout
    proc = subprocess.run([sys.executable, "-m", "voxgate", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "Usage: " in proc.stdout, proc.stdout + proc.stderr


def test_public_names_load_lazily() -> None:
    code = ("import sys, voxgate\n"
            "assert 'tensorstore' not in sys.modules\n"
            "from voxgate import *\n"
            "import voxgate.api, voxgate.services, voxgate.transfer, voxgate.volume\n"
            "assert open is voxgate.api.open and copy is voxgate.transfer.copy\n"
            "assert mesh is voxgate.services.mesh and Volume is voxgate.volume.Volume\n"
            "assert set(voxgate.__all__) <= set(dir(voxgate))\n"
            "assert all(getattr(voxgate, n) is not None for n in voxgate.__all__)\n"
            "try:\n"
            "    voxgate.no_such_name\n"
            "except AttributeError as exc:\n"
            "    assert 'no_such_name' in str(exc)\n"
            "else:\n"
            "    raise AssertionError('no AttributeError')\n"
            "print('OK', 'tensorstore' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK True" in proc.stdout


def test_mesh_and_skeletonize_refuse_without_output(tmp_path: Path) -> None:
    from voxgate.synthetic import synthetic_labels

    labels = synthetic_labels((16, 32, 32), cell=(8, 16, 16), seed=1)
    seg = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=labels.shape, chunks=(16, 32, 32),
                         dtype="uint64", voxel_size=(40, 8, 8), kind="segmentation")
    seg[:] = labels
    run = CliRunner().invoke
    res = run(main, ["mesh", seg.url])
    assert res.exit_code == 1, res.output
    assert "not a precomputed layer" in res.output
    assert "--out" in res.output and "--obj-dir" in res.output
    assert "meshes (" not in res.output  # refused before any meshing
    res = run(main, ["skeletonize", str(tmp_path / "seg.zarr")])
    assert res.exit_code == 1, res.output
    assert "--out" in res.output and "--swc-dir" in res.output and "skeletons (" not in res.output
    # --sharded needs a precomputed layer to shard into, and multires meshes
    res = run(main, ["mesh", seg.url, "--sharded", "--obj-dir", str(tmp_path / "obj")])
    assert res.exit_code == 1 and "--sharded" in res.output and "meshes (" not in res.output
    res = run(main, ["mesh", seg.url, "--sharded", "--format", "legacy",
                     "--out", f"precomputed://file://{tmp_path}/x"])
    assert res.exit_code == 1 and "multires" in res.output, res.output
    assert not list(tmp_path.glob("obj*"))
    # with somewhere to go, the same volume is meshed
    res = run(main, ["mesh", seg.url, "--ids", "1", "--obj-dir", str(tmp_path / "obj")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "obj" / "1.obj").exists()


def test_mesh_and_skeletonize_write_into_a_bare_precomputed_path(tmp_path: Path) -> None:
    seg = _seg(tmp_path)
    run = CliRunner().invoke
    res = run(main, ["mesh", str(tmp_path / "seg"), "--ids", "1,2", "--format", "legacy"])
    assert res.exit_code == 0, res.output
    assert "wrote 2 legacy meshes" in res.output
    info = json.loads((tmp_path / "seg" / "info").read_text())
    assert info["mesh"] and (tmp_path / "seg" / info["mesh"] / "1:0").exists()
    res = run(main, ["skeletonize", str(tmp_path / "seg"), "--ids", "1", "--dust", "10"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "seg" / "info").read_text())
    assert (tmp_path / "seg" / info["skeletons"] / "1").exists()
    assert seg.kind == "segmentation"


def test_sharded_flag_reaches_the_writers(tmp_path: Path) -> None:
    from voxgate.formats.mesh import read_meshes
    from voxgate.formats.skeleton import read_skeletons

    seg = _seg(tmp_path)
    run = CliRunner().invoke
    res = run(main, ["mesh", seg.url, "--ids", "1,2", "--sharded"])
    assert res.exit_code == 0, res.output
    assert "wrote 2 multires sharded meshes" in res.output
    info = json.loads((tmp_path / "seg" / "info").read_text())
    mesh_info = json.loads((tmp_path / "seg" / info["mesh"] / "info").read_text())
    assert mesh_info["@type"] == "neuroglancer_multilod_draco"
    assert mesh_info["sharding"]["@type"] == "neuroglancer_uint64_sharded_v1"
    assert not (tmp_path / "seg" / info["mesh"] / "1.index").exists()  # not one file per id
    assert sorted(read_meshes(seg.url, [1, 2])) == [1, 2]
    res = run(main, ["skeletonize", seg.url, "--ids", "1", "--dust", "10", "--sharded"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "seg" / "info").read_text())
    skel_info = json.loads((tmp_path / "seg" / info["skeletons"] / "info").read_text())
    assert skel_info["sharding"]["@type"] == "neuroglancer_uint64_sharded_v1"
    assert not (tmp_path / "seg" / info["skeletons"] / "1").exists()
    assert list(read_skeletons(seg.url, [1])) == [1]


def test_serve_refuses_a_taken_port_before_saying_listening(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = CliRunner().invoke(main, ["serve", "--data-root", str(tmp_path), "--port",
                                        str(port)])
    assert res.exit_code == 1, res.output
    assert f"port {port} on 127.0.0.1 is already in use" in res.output and "--port" in res.output
    assert "listening" not in res.output


def _interrupt_after(monkeypatch: Any, cls: type, writes: int) -> list[int]:
    """Make ``cls.write`` raise KeyboardInterrupt (as Ctrl-C would) after ``writes`` writes."""
    calls = [0]
    real = cls.write

    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        if calls[0] >= writes:
            raise KeyboardInterrupt
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "write", write)
    return calls


def test_cp_interrupted_says_how_to_resume_and_status_forget(tmp_path: Path,
                                                              monkeypatch: Any) -> None:
    from voxgate import transfer
    from voxgate.remotes.n5 import N5Remote

    v = _vol(tmp_path)
    dst = f"n5://{tmp_path}/b.n5"
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 1)  # one block per chunk: 12 + 4 blocks
    calls = _interrupt_after(monkeypatch, N5Remote, 5)
    res = CliRunner().invoke(main, ["cp", v.url, dst, "--no-progress", "--workers", "1"])
    assert res.exit_code == 130, res.output
    journals = list((Path(os.environ["VOXGATE_STATE_DIR"]) / "transfers").glob("*.journal"))
    assert len(journals) == 1
    assert "interrupted after 5 of 16 blocks; run the same command again to resume" in res.output
    assert f"journal at {journals[0]}" in res.output

    res = CliRunner().invoke(main, ["cp", "--status"])
    assert res.exit_code == 0, res.output
    assert f"{v.url} -> {dst}" in res.output and "5/16 blocks done" in res.output
    assert str(journals[0]) in res.output

    # the same command resumes: the 5 blocks done are not written again
    calls[0] = -1000  # no interrupt now; count the writes
    res = CliRunner().invoke(main, ["cp", v.url, dst, "--no-progress", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "resumed: 5 chunks already done" in res.output
    # 11 blocks left: scale 0's 7, and scale 1's 4, which are fill (never downsampled) and
    # need no write into the destination this copy created
    assert calls[0] == -1000 + 7
    np.testing.assert_array_equal(voxgate.open(dst).read(), v.read())
    assert CliRunner().invoke(main, ["cp", "--status"]).output.startswith("no unfinished copies")


def test_cp_forget(tmp_path: Path, monkeypatch: Any) -> None:
    from voxgate import transfer
    from voxgate.remotes.zarr import ZarrRemote

    v = _vol(tmp_path)
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 1)
    _interrupt_after(monkeypatch, ZarrRemote, 2)
    for name in ("b", "c"):
        res = CliRunner().invoke(main, ["cp", v.url, str(tmp_path / f"{name}.zarr"),
                                        "--no-progress", "--workers", "1"])
        assert res.exit_code == 130, res.output
    state = Path(os.environ["VOXGATE_STATE_DIR"]) / "transfers"
    assert len(list(state.glob("*.journal"))) == 2
    # the destination as typed (a bare path) finds the journal its zarr:// URL named
    res = CliRunner().invoke(main, ["cp", "--forget", v.url, str(tmp_path / "b.zarr")])
    assert res.exit_code == 0, res.output
    assert "forgot" in res.output and "b.zarr" in res.output and "c.zarr" not in res.output
    status = CliRunner().invoke(main, ["cp", "--status"]).output
    assert "c.zarr" in status and "b.zarr" not in status
    res = CliRunner().invoke(main, ["cp", "--forget", v.url, str(tmp_path / "b.zarr")])
    assert res.exit_code == 0 and "nothing to forget" in res.output
    res = CliRunner().invoke(main, ["cp", "--forget-all"])
    assert res.exit_code == 0 and "c.zarr" in res.output
    assert not list(state.glob("*.journal"))
    for args in (["cp", "--status", v.url], ["cp", "--forget", v.url], ["cp"],
                 ["cp", "--status", "--forget-all"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, (args, res.output)


def test_stats_refuses_an_image(tmp_path: Path) -> None:
    v = _vol(tmp_path)  # uint16 intensities, kind='image'
    res = CliRunner().invoke(main, ["stats", v.url])
    assert res.exit_code == 1
    assert "label_stats needs a segmentation" in res.output and "--as-labels" in res.output
    res = CliRunner().invoke(main, ["stats", v.url, "--as-labels", "--csv",
                                    str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    # every voxel of the ramp is its own value: 8*16*24 - 1 labels (0 is background)
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 8 * 16 * 24 - 1 + 1


def test_cp_with_a_misspelt_option_lists_the_accepted_ones(tmp_path: Path) -> None:
    v = _vol(tmp_path)
    res = CliRunner().invoke(main, ["cp", v.url, f"zarr://{tmp_path}/b.zarr", "--no-progress",
                                    "-o", "compresion=zstd"])
    assert res.exit_code == 1
    assert "'compresion' (did you mean 'compression'?)" in res.output
    assert "it accepts zarr_format, compression, shards" in res.output
    assert "accepts none" not in res.output
    assert not (tmp_path / "b.zarr").exists()


def test_mesh_close_flag(tmp_path: Path) -> None:
    """--no-close reaches the Service: OBJ files of segments cut by the volume's edge are open
    there (fewer faces) and equal voxgate.mesh(..., close=False)."""
    seg = _seg(tmp_path)
    run = CliRunner().invoke
    counts = {}
    for flag in ("--close", "--no-close"):
        out = tmp_path / flag.strip("-")
        # (--prefer local: the first run stores its meshes in the layer, which "auto" would use)
        res = run(main, ["mesh", seg.url, "--ids", "1", flag, "--prefer", "local",
                         "--obj-dir", str(out)])
        assert res.exit_code == 0, res.output
        counts[flag] = sum(line.startswith("f ") for line in (out / "1.obj").read_text()
                           .splitlines())
    ref = {c: len(voxgate.mesh(seg, ids=[1], close=c, prefer="local")[1].faces)
           for c in (True, False)}
    assert counts == {"--close": ref[True], "--no-close": ref[False]}
    assert ref[False] < ref[True]
