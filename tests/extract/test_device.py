"""extract.device / train.device: what auto, gpu and cpu ask Ray for, the autoscaler's node types as ray_ser reads
them, and the refusal of a request that no node and no node type could meet (ray_ser.cluster_resources).

The autoscaler itself (a GPU node added for device gpu, then released) is tests/services/test_autoscaling.py."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from ray_ser import cluster_resources as cr
from ray_ser.config import ExperimentConfig
from ray_ser.corpora import Manifest, Utterance
from ray_ser.errors import InputError
from ray_ser.extract.program import ExtractConfig, extract, option_drift, resolve_device, run_options
from ray_ser.train.config import TrainConfig
from ray_ser.train.driver import _scaling, config_hash

ROOT = Path(__file__).resolve().parents[2]
GPU_WORKER = cr.NodeType("gpu_worker", {"GPU": 1.0}, 8)
CPU_NODE = {"CPU": 8.0, "memory": 3e10, "object_store_memory": 1e10, "node:10.0.0.1": 1.0}


def test_the_projects_cluster_yaml_offers_gpu_workers():
    types = cr.config_node_types(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    assert types == [cr.NodeType("gpu_worker", {"GPU": 1.0}, 8)]  # the head type is not one the autoscaler adds
    # g5.xlarge's CPUs come from the instance type at launch: an unlisted CPU counts as met, an unlisted GPU never
    assert types[0].offers({"GPU": 1, "CPU": 1}) and not cr.NodeType("cpu", {}, 2).offers({"GPU": 1})
    assert not types[0].offers({"GPU": 2}) and not types[0].offers({"gpu_node": 0.1})


def test_cluster_max_workers_caps_each_type():
    config = {"max_workers": 3, "head_node_type": "head", "available_node_types": {
        "head": {"resources": {}, "max_workers": 0}, "a": {"resources": {"GPU": 4}, "max_workers": 10},
        "b": {"resources": {"CPU": 2}}, "c": {"resources": {"GPU": 1}, "max_workers": 0}}}
    assert cr.config_node_types(config) == [cr.NodeType("a", {"GPU": 4.0}, 3), cr.NodeType("b", {"CPU": 2.0}, 3)]


def test_auto_gpu_cpu_decide_from_alive_nodes_and_node_types():
    assert not cr.wants_gpu("auto", alive=[CPU_NODE], types=[])
    assert cr.wants_gpu("auto", alive=[{**CPU_NODE, "GPU": 1.0}], types=[])  # a fixed cluster: as before
    assert cr.wants_gpu("auto", alive=[CPU_NODE], types=[GPU_WORKER])  # the autoscaler can add GPUs
    assert cr.wants_gpu("gpu", alive=[CPU_NODE], types=[]) and not cr.wants_gpu("cpu", alive=[], types=[GPU_WORKER])
    with pytest.raises(ValueError, match="device must be one of auto, gpu, cpu"):
        cr.wants_gpu("cuda")
    assert cr.gpu_slots({"GPU": 1}, alive=[{**CPU_NODE, "GPU": 2.0}], types=[GPU_WORKER]) == 10


def test_place_goes_on_waits_for_the_autoscaler_or_refuses(capsys):
    assert cr.place({"CPU": 1}, "x", alive=[CPU_NODE], types=[]) == cr.Placement({"CPU": 1.0}, True)
    waiting = cr.place({"GPU": 1, "CPU": 0}, "the model actors", alive=[CPU_NODE], types=[GPU_WORKER])
    assert waiting == cr.Placement({"GPU": 1.0}, False, GPU_WORKER)
    assert capsys.readouterr().out.strip() == ("waiting for the autoscaler to add a node with {GPU: 1} (node type "
                                               "gpu_worker) for the model actors")
    with pytest.raises(InputError) as e:
        cr.place({"GPU": 1, "CPU": 1}, "each Ray Train worker", "Set train.device: cpu", alive=[CPU_NODE],
                 types=[cr.NodeType("big_cpu", {"CPU": 64.0}, 2)])
    assert str(e.value) == ("no node of the Ray cluster can run each Ray Train worker: it needs {CPU: 1, GPU: 1} on one "
                            "node; the alive nodes offer {CPU: 8}, and the autoscaler's node types are big_cpu "
                            "{CPU: 64}. Set train.device: cpu")


def test_device_gpu_resolves_dtype_auto_as_for_gpus():
    opts = ExtractConfig(device="gpu")
    assert (run_options(opts, 4).device, run_options(opts, 4).dtype) == ("gpu", "float16")  # no GPU alive here
    cpu = run_options(ExtractConfig(), 4, gpus=0)
    assert (cpu.device, cpu.dtype) == ("cpu", "float32")
    assert run_options(ExtractConfig(device="cpu"), 4, gpus=2).dtype == "float32"
    # where the model runs is not what a row holds: the table's recorded dtype is what is compared
    old = {"options": {"device": "gpu", "dtype": "float16"}}
    assert option_drift(old, {"options": {"device": "cpu", "dtype": "float16"}}) == []


def test_config_and_flags_set_device():
    from ray_ser.jobs import extract as extract_job
    from ray_ser.jobs import train as train_job

    cfg = ExperimentConfig.model_validate({"extract": {"device": "gpu"}, "train": {"device": "cpu"}})
    assert cfg.extract.device == "gpu" and cfg.train.device == "cpu"
    assert extract_job.parser().parse_args(["--device", "gpu"]).device == "gpu"
    cfg, _ = extract_job.from_args(extract_job.parser(), ["--device", "gpu"], extract_job.BINDS)
    assert cfg.extract.device == "gpu"
    cfg, _ = train_job.build_config(["--device", "cpu"])
    assert cfg.train.device == "cpu"


def test_use_gpu_is_a_deprecated_alias_of_device():
    assert (TrainConfig(use_gpu=True).device, TrainConfig(use_gpu=True).use_gpu) == ("gpu", None)
    assert TrainConfig(use_gpu=False).device == "cpu" and TrainConfig().device == "auto"
    with pytest.raises(ValueError, match="use_gpu True contradicts device 'cpu'"):
        TrainConfig(use_gpu=True, device="cpu")
    # where a run trains is no part of its identity: a run resumes under another device
    assert config_hash(TrainConfig(device="gpu")) == config_hash(TrainConfig()) == config_hash(TrainConfig(use_gpu=True))


def test_fake_gpu_switch_is_off_unless_set(monkeypatch):
    from ray_ser.fm.base import pick_device

    monkeypatch.delenv(cr.FAKE_GPUS_ENV, raising=False)
    assert not cr.fake_gpus()
    monkeypatch.setenv(cr.FAKE_GPUS_ENV, "1")
    assert cr.fake_gpus() and pick_device().type == "cpu"
    monkeypatch.setenv(cr.FAKE_GPUS_ENV, "0")
    assert not cr.fake_gpus()


# ---- on a plain local Ray: no GPU, no autoscaler -------------------------------------------------------------
def test_auto_is_cpu_on_a_plain_local_ray(local_ray):
    assert cr.node_types() == [] and cr.autoscaling_config_file() is None
    assert resolve_device("auto") == "cpu" and run_options(ExtractConfig(), 4).dtype == "float32"
    assert _scaling(TrainConfig(cpus_per_worker=0.5)).use_gpu is False


def test_device_gpu_without_any_gpu_is_refused_at_once(local_ray, tiny_model_dir, tmp_path):
    with pytest.raises(InputError, match=r"each Ray Train worker \(train.device gpu\): it needs \{CPU: 0.5, GPU: 1\}"):
        _scaling(TrainConfig(device="gpu", cpus_per_worker=0.5))
    sf.write(tmp_path / "a.wav", (0.1 * np.sin(np.arange(16000) / 7)).astype(np.float32), 16000)
    manifest = Manifest.from_utterances([Utterance(utt_id="g/a", path=str(tmp_path / "a.wav"), speaker="s",
                                                   corpus="g")], ["neutral"])
    t0 = time.monotonic()
    with pytest.raises(InputError) as e:
        extract(manifest, str(tmp_path / "store"), ExtractConfig(model=str(tiny_model_dir), conditions=["clean"],
                                                                   model_key="tiny", device="gpu"))
    assert time.monotonic() - t0 < 30  # refused, not waiting for a GPU that never comes
    assert str(e.value).startswith("no node of the Ray cluster can run the model actors (extract.device gpu): it "
                                   "needs {GPU: 1} on one node; the alive nodes offer {CPU: 2}, and the autoscaler's "
                                   "node types are none. Set extract.device: cpu")
