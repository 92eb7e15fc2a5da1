"""Run as a SEPARATE process: re-read each ref's range from the store, as the trainer will.

``python -m tests.integration.inference.reread_refs IN.json OUT.json``; IN holds
``{"platform": {PlatformSettings fields}, "refs": [InferenceRef, ...], "direct_every": k}``. The refs'
ranges are read the way the trainer reads a batch of jobs (``read_ranges``: one query per series,
then ``Window.slice_range`` per ref); every k-th ref (and the last) is also read on its own with
``read_range`` (one DuckLake query per ref is ~50-300 ms on a busy box, too slow for all of them),
and both reads must agree. For each ref, OUT gets the row count and checksum of its range, the
sha256 of
``build_input(window, ref.norm_params)`` bytes, whether ``compute_norm_params(window)`` gives the
ref's params again, and the action probabilities of the ref's model version on that input.
Only the ref and the store are used: nothing from the service process.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import torch

from reftrain.adapters import load_checkpoint
from reftrain.model import DEFAULT_SEED, build_input, compute_norm_params
from reftrain.model.adapter import TorchAdapter
from reftrain.settings import PlatformSettings
from reftrain.store import Store


def main(src: str, dst: str) -> None:
    torch.set_num_threads(1)
    with open(src) as fh:
        data = json.load(fh)
    store = Store.from_settings(PlatformSettings(**data["platform"]), create=False)
    models: dict[tuple[str, int], Any] = {}
    out = []
    try:
        refs = data["refs"]
        every = int(data.get("direct_every", 1))
        blocks = store.read_ranges([(r["symbol"], r["timeframe"], r["data_range_start"], r["data_range_end"])
                                    for r in refs])
        for i, ref in enumerate(refs):
            w = blocks[(ref["symbol"], ref["timeframe"])].slice_range(ref["data_range_start"], ref["data_range_end"])
            direct = None
            if i % every == 0 or i == len(refs) - 1:
                direct = store.read_range(ref["symbol"], ref["timeframe"], ref["data_range_start"],
                                          ref["data_range_end"]).checksum()
            x = build_input(w, ref["norm_params"])
            key = (ref["model_key"], int(ref["model_version"]))
            if key not in models:
                if key[1] == 0:
                    models[key] = TorchAdapter.create(DEFAULT_SEED, "cpu")
                else:
                    ((path,),) = store.query("SELECT checkpoint_path FROM lake.model_versions WHERE model_key = ? "
                                             "AND version = ?", [key[0], key[1]])
                    models[key] = load_checkpoint(f"{store.data_path}/{path}", TorchAdapter, "cpu")[0]
            probs = models[key].predict(x[None], [ref["norm_params"]])[0].probs
            out.append({
                "inference_id": ref["inference_id"],
                "rows": len(w),
                "first": w.start,
                "last": w.end,
                "checksum": w.checksum(),
                "direct_checksum": direct,
                "input_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
                "input_shape": list(x.shape),
                "norm_params_equal": compute_norm_params(w) == ref["norm_params"],
                "probs": [probs["buy"], probs["sell"], probs["hold"]],
            })
    finally:
        store.close()
    with open(dst, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
