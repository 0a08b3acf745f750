"""The zoo "chain" model built whole and split in two and three stages (tests' helper), with one
input and its expected outputs (unsplit TVM and onnxruntime)."""
from __future__ import annotations

import pytest

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.check import random_inputs, reference
from tvmsplit.runtime.stage import StageRunner


def chain_bundles(tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as mp:  # the build cache of this test session, as conftest
        mp.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "build-cache"))
        root = tmp_path_factory.mktemp("chain")
        chain = ts.load(zoo.make("chain"), name="chain")
        b = {f"chain{len(cuts) + 1}": ts.build_bundle(chain, ts.plan_split(chain, cuts),
                                                      root / f"chain{len(cuts) + 1}")
             for cuts in ([], ["pool1"], ["pool1", "pool2"])}
    x = random_inputs(chain.inputs, seed=1)
    with StageRunner(b["chain1"].stages[0].library, b["chain1"].stages[0].plan) as runner:
        expected = (x, runner.run(x), reference(chain, x))
    return {"graphs": {"chain": chain}, "bundles": b, "expected": {"chain": expected}}
