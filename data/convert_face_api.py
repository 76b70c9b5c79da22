"""Convert dlib's face-recognition ResNet, as shipped in the npm package
``@vladmandic/face-api@1.7.15``, into ``data/dlib_face_recognition.npz``.

Usage (from the project root)::

    python data/convert_face_api.py                                # runs `npm pack` in a temp folder
    python data/convert_face_api.py vladmandic-face-api-1.7.15.tgz  # or use a tarball you have
    python data/convert_face_api.py TARBALL -o OUT.npz

Only two files of the tarball are read, straight from it (nothing is installed or executed):
``package/model/face_recognition_model-weights_manifest.json`` (name, shape, dtype and
quantisation of each of the 117 tensors, in the order they are stored) and
``package/model/face_recognition_model.bin`` (6,444,032 bytes: the tensors back to back).

The weights are kept as the package stores them, so the file stays about as small as the
original: 109 tensors are uint8-quantised (``value = q * scale + min`` with one ``scale`` and
``min`` per tensor, exactly as TensorFlow.js dequantises them), 8 are float32. The ``.npz``
(read with ``numpy.load(..., allow_pickle=False)``) holds, per tensor ``NAME`` of the manifest
(e.g. ``conv64_1/conv2/conv/filters``), the array ``NAME`` in the manifest's shape and layout
(TensorFlow: conv filters are H x W x in x out, ``fc`` is 256 x 128) and dtype (uint8 or
float32), plus ``__meta__``: UTF-8 bytes (uint8) of a JSON document with the manifest entries, the source's checksums and
the licences. ``refine.embedders.dlib_resnet.load_weights`` dequantises at load time.

The output is deterministic: the same tarball gives a byte-identical file.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PACKAGE = "@vladmandic/face-api"
VERSION = "1.7.15"
TARBALL = "vladmandic-face-api-1.7.15.tgz"
# `npm pack` of the release, as the npm registry lists it (dist.shasum / dist.integrity).
TARBALL_SHA1 = "10cddf5c405f6f52f37605c9ee28c91ac6a23ead"
MANIFEST = "package/model/face_recognition_model-weights_manifest.json"
WEIGHTS = "package/model/face_recognition_model.bin"
OUT = Path(__file__).resolve().parent / "dlib_face_recognition.npz"
LICENCE = ("Weights: dlib's dlib_face_recognition_resnet_model_v1 by Davis E. King, released into the "
           "public domain (CC0 1.0). TensorFlow.js port and packaging: face-api.js (MIT), "
           "forked and republished in @vladmandic/face-api 1.7.15 by Vladimir Mandic (MIT).")


def npm_pack(folder: Path) -> Path:
    """Fetch the release tarball with `npm pack` into ``folder``; return its path."""
    try:
        subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=folder, check=True,
                       stdout=subprocess.PIPE)
    except FileNotFoundError:
        sys.exit("npm not found: install Node.js, or give the path of vladmandic-face-api-1.7.15.tgz.")
    except subprocess.CalledProcessError as e:
        sys.exit(f"`npm pack {PACKAGE}@{VERSION}` failed (exit {e.returncode}); "
                 "check access to the npm registry, or give the tarball's path.")
    return folder / TARBALL


def dequantise(q: np.ndarray, scale: float, minimum: float) -> np.ndarray:
    """TensorFlow.js's uint8 dequantisation: ``q * scale + min`` in float64, stored as float32."""
    return (q.astype(np.float64) * scale + minimum).astype(np.float32)


def read_tarball(path: Path) -> tuple[list[dict], bytes, dict]:
    raw = path.read_bytes()
    sums = {"tarball": path.name, "tarball_sha1": hashlib.sha1(raw).hexdigest(),
            "tarball_sha256": hashlib.sha256(raw).hexdigest()}
    if sums["tarball_sha1"] != TARBALL_SHA1:
        sys.exit(f"{path}: sha1 {sums['tarball_sha1']} is not that of {PACKAGE}@{VERSION} "
                 f"({TARBALL_SHA1}); give the tarball that `npm pack {PACKAGE}@{VERSION}` fetches.")
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        manifest = json.load(tar.extractfile(MANIFEST))
        blob = tar.extractfile(WEIGHTS).read()
    sums["model_bin_sha256"] = hashlib.sha256(blob).hexdigest()
    return manifest, blob, sums


def convert(tarball: Path, out: Path = OUT) -> Path:
    manifest, blob, sums = read_tarball(tarball)
    if len(manifest) != 1 or manifest[0]["paths"] != ["face_recognition_model.bin"]:
        sys.exit(f"{tarball}: unexpected weights manifest (expected one group, one .bin file).")
    arrays: dict[str, np.ndarray] = {}
    entries = []
    offset = 0
    for w in manifest[0]["weights"]:
        if w["dtype"] != "float32":
            sys.exit(f"{tarball}: tensor {w['name']} has dtype {w['dtype']}; only float32 is expected.")
        n = int(np.prod(w["shape"]))
        q = w.get("quantization")
        if q is None:
            a = np.frombuffer(blob, "<f4", n, offset).astype(np.float32)
            offset += 4 * n
        elif q["dtype"] == "uint8":
            a = np.frombuffer(blob, np.uint8, n, offset).copy()
            offset += n
        else:
            sys.exit(f"{tarball}: tensor {w['name']} uses {q['dtype']} quantisation; only uint8 is expected.")
        arrays[w["name"]] = a.reshape(w["shape"])
        entries.append(w)
    if offset != len(blob):
        sys.exit(f"{tarball}: the manifest covers {offset} of {len(blob)} bytes of the weights file.")
    meta = {
        "what": "dlib face recognition ResNet (dlib_face_recognition_resnet_model_v1): 150x150 RGB -> 128-D",
        "source": f"npm {PACKAGE}@{VERSION}: {MANIFEST} + {WEIGHTS}",
        **sums,
        "licence": LICENCE,
        "converter": "data/convert_face_api.py",
        "dequantise": "value = float32(q * scale + min) for tensors with 'quantization'; others are float32",
        "layout": "TensorFlow: conv filters [kh, kw, in, out], fc [256, 128]",
        "tensors": entries,
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, indent=1).encode("utf-8"), np.uint8)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    _write_npz(tmp, arrays)
    tmp.replace(out)
    return out


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed .npz whose bytes depend only on the arrays (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tarball", nargs="?", type=Path,
                    help=f"{TARBALL}, or a folder holding it; default: run `npm pack` in a temp folder")
    ap.add_argument("-o", "--out", type=Path, default=OUT, help=f"output .npz (default {OUT})")
    args = ap.parse_args(argv)
    if args.tarball is None:
        with tempfile.TemporaryDirectory() as tmp:
            out = convert(npm_pack(Path(tmp)), args.out)
    else:
        tarball = args.tarball / TARBALL if args.tarball.is_dir() else args.tarball
        if not tarball.is_file():
            sys.exit(f"{tarball}: no such file; run `npm pack {PACKAGE}@{VERSION}` or omit the argument.")
        out = convert(tarball, args.out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
