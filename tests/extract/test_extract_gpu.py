"""GPU honesty: a cluster that offers GPUs which torch cannot use fails at start-up with a clear message.

Ray is started with a GPU resource on this CPU-only machine, which is exactly that situation."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from ray_ser.corpora import Manifest, Utterance
from ray_ser.extract.program import ExtractConfig, ensure_gpu_usable, extract
from ray_ser.store.core import Store

pytestmark = [pytest.mark.no_cuda,
              pytest.mark.skipif(torch.cuda.is_available(), reason="this machine's torch can use CUDA")]
MESSAGE = r"offers 1 GPU\(s\), but torch .* cannot use CUDA \(a CPU-only build"


@pytest.fixture(scope="module")
def fake_gpu_ray():
    import ray

    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_extraction_refuses_gpus_torch_cannot_use(fake_gpu_ray, tiny_model_dir, tmp_path):
    sf.write(tmp_path / "a.wav", (0.1 * np.sin(np.arange(16000) / 7)).astype(np.float32), 16000)
    manifest = Manifest.from_utterances([Utterance(utt_id="g/a", path=str(tmp_path / "a.wav"), speaker="s",
                                                   corpus="g")], ["neutral"])
    uri = str(tmp_path / "store")
    with pytest.raises(RuntimeError, match=MESSAGE):
        extract(manifest, uri, ExtractConfig(model=str(tiny_model_dir), conditions=["clean"], model_key="tiny"))
    assert Store(uri).open("lease__emb__tiny").to_arrow().column("holder").to_pylist() == [""]  # released


def test_an_actor_holding_a_gpu_fails_at_start(fake_gpu_ray):
    probe = fake_gpu_ray.remote(num_gpus=1, num_cpus=0)(ensure_gpu_usable)
    with pytest.raises(Exception, match=MESSAGE):
        fake_gpu_ray.get(probe.remote())
