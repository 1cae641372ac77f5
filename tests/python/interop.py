"""Interop check: the exported model and the dataset shards are readable by the Python
ecosystem as they are. Loads model.safetensors with `safetensors.numpy`, reads the test split's
Arrow shards with pyarrow, re-implements the seed CNN's forward pass in numpy from PyTorch's
layout conventions (NCHW, cross-correlation, [out, in] dense weights, C*H*W flatten order) and
checks its loss and accuracy against `ctctl evaluate -o json`. The model card's sha256 of the
weights and of the dataset's manifest are checked with hashlib. The model's recorded input
pipeline (a CT window in Hounsfield units) is applied as documented: clamp((v - lo) / width).

usage: interop.py MODEL_DIR DATASET_DIR EVALUATE_JSON
"""

import hashlib
import json
import sys

import numpy as np
import pyarrow.ipc as ipc
from numpy.lib.stride_tricks import sliding_window_view
from safetensors.numpy import load_file


def conv(x, w, b):
    win = sliding_window_view(x, (3, 3), axis=(2, 3))  # N, C, H-2, W-2, 3, 3
    return np.einsum("nchwij,ocij->nohw", win, w, optimize=True) + b[None, :, None, None]


def pool(x):
    n, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, :, : h2 * 2, : w2 * 2].reshape(n, c, h2, 2, w2, 2).max(axis=(3, 5))


def main():
    model_dir, data_dir, expected_path = (a.removeprefix("file://") for a in sys.argv[1:4])
    card = json.load(open(f"{model_dir}/model.json"))
    cfg = card["model"]
    w = load_file(f"{model_dir}/model.safetensors")
    names = sorted(w)
    assert names == sorted(
        ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    ), names
    manifest = json.load(open(f"{data_dir}/manifest.json"))
    dtype = {"u8": np.uint8, "u16": "<u2", "i16": "<i2", "f32": "<f4"}[manifest["image"]["pixel_type"]]
    h, wd, c = (manifest["image"][k] for k in ("height", "width", "channels"))
    images, labels = [], []
    for shard in manifest["splits"]["test"]["shards"]:
        table = ipc.open_file(f"{data_dir}/{shard['file']}").read_all()
        assert table.schema.names == ["id", "label", "image"], table.schema
        images += [np.frombuffer(b, dtype=dtype) for b in table.column("image").to_pylist()]
        labels += table.column("label").to_pylist()
    x = np.stack(images).astype(np.float32).reshape(-1, h, wd, c).transpose(0, 3, 1, 2)
    window = cfg.get("input", {}).get("window")
    if window is not None:
        lo = np.float32(window["center"]) - np.float32(window["width"]) / np.float32(2)
        x = np.clip((x - lo) * (np.float32(1) / np.float32(window["width"])), 0, 1)
    assert (cfg["height"], cfg["width"]) == (h, wd), "resized models are not re-implemented here"
    x = (x - cfg["norm_mean"]) / cfg["norm_std"]
    y = np.array(labels)
    x = pool(np.maximum(conv(x, w["conv1.weight"], w["conv1.bias"]), 0))
    x = pool(np.maximum(conv(x, w["conv2.weight"], w["conv2.bias"]), 0))
    x = x.reshape(x.shape[0], -1)
    x = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0)
    logits = (x @ w["fc2.weight"].T + w["fc2.bias"]).astype(np.float64)
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(y)), y].mean()
    acc = (logits.argmax(axis=1) == y).mean()
    want = json.load(open(expected_path))
    print(f"numpy: loss {loss:.6f} accuracy {acc:.4f}; ctctl evaluate: loss {want['loss']:.6f} accuracy {want['accuracy']:.4f}")
    sha = lambda path: hashlib.sha256(open(path, "rb").read()).hexdigest()
    weights_ok = card["weights_sha256"] == sha(f"{model_dir}/model.safetensors")
    manifest_ok = card["dataset"]["manifest_sha256"] == sha(f"{data_dir}/manifest.json")
    print(f"card: weights sha256 {'matches' if weights_ok else 'DIFFERS'}, manifest sha256 {'matches' if manifest_ok else 'DIFFERS'}")
    ok = abs(loss - want["loss"]) < 1e-4 and abs(acc - want["accuracy"]) < 1e-9 and len(y) == want["samples"]
    ok = ok and weights_ok and manifest_ok
    print(f"interop: {int(ok)} passed, {int(not ok)} failed")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
