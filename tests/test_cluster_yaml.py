"""cluster.yaml validates against the schema Ray ships, and keeps the promises its comments make."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

REPO = Path(__file__).resolve().parent.parent


def _config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(_config(), schema)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_config()))   # what `ray up` runs: AWS defaults merged, then checked


def test_shape_and_safety():
    config = _config()
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}          # no data work on the head
    workers = {k: v for k, v in nodes.items() if k != config["head_node_type"]}
    assert all(v["min_workers"] == 0 for v in workers.values())               # scale to zero between nights
    assert any(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert any("GPU" not in v["resources"] for v in workers.values())
    assert config["idle_timeout_minutes"] <= 15 and config["provider"]["cache_stopped_nodes"] is False
    images = [config["docker"]["image"], config["docker"]["head_image"]]
    assert all(img.startswith(f"rayproject/ray:{ray.__version__}-") for img in images)  # pinned to our Ray
    assert all(v["node_config"]["IamInstanceProfile"]["Arn"] for v in nodes.values())
    text = (REPO / "cluster.yaml").read_text().lower()
    assert "ray-ml" not in text.replace("the ray-ml images are discontinued", "")
    assert "aws_secret_access_key" not in text and "aws_access_key_id" not in text
