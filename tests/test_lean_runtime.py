"""The runtime never imports torch, transformers or the export stage: proven in a fresh interpreter where
importing them fails."""

import json
import subprocess
import sys

SCRIPT = r"""
import importlib.abc, json, sys
BLOCKED = ("torch", "transformers", "optimum", "onnx", "clipedge_export", "torchvision", "huggingface_hub")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked import of {name}")
        return None
sys.meta_path.insert(0, Block())
from PIL import Image
from clipedge import ZeroShotClassifier
from clipedge.cli import main
clf = ZeroShotClassifier.load(sys.argv[1])
res = clf.classify([Image.new("RGB", (50, 40), (255, 0, 0))], ["red", "blue"], templates="openai-imagenet")
code = main(["classify", sys.argv[2], "-m", sys.argv[1], "--labels", "red, blue", "--json"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"probs": res[0]["probs"], "heavy": heavy, "code": code}))
"""


def test_classify_without_torch_or_transformers(tiny_bundle, tmp_path):
    img = tmp_path / "red.png"
    from PIL import Image

    Image.new("RGB", (30, 30), (255, 0, 0)).save(img)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_bundle), str(img)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [] and result["code"] == 0
    assert abs(sum(result["probs"]) - 1) < 1e-5
