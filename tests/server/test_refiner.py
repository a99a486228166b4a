"""Base + refiner, both from single-file checkpoints with local configs, in a real server."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import decode_data_url, open_image, small


@pytest.fixture(scope="module")
def refined(refiner_server) -> httpx.Client:
    with httpx.Client(base_url=refiner_server.url, timeout=120) as client:
        yield client


def generate(client: httpx.Client, **fields: object) -> list[bytes]:
    response = client.post("/v1/models/sdxl:predict", json={"instances": [small(**fields)]})
    assert response.status_code == 200, response.text
    return [decode_data_url(url)[1] for url in response.json()["predictions"][0]["images"]]


def test_ensemble_of_experts(refined: httpx.Client, refiner_server) -> None:
    images = generate(refined, high_noise_frac=0.8, num_inference_steps=5, seed=4, num_images=2, width=128)
    assert [open_image(image).size for image in images] == [(128, 64), (128, 64)]
    assert images[0] != images[1]
    assert images == generate(refined, high_noise_frac=0.8, num_inference_steps=5, seed=4, num_images=2, width=128)


def test_plain_refine_with_strength(refined: httpx.Client) -> None:
    (refined_image,) = generate(refined, strength=0.5, refiner_inference_steps=4, seed=4)
    (other_strength,) = generate(refined, strength=0.9, refiner_inference_steps=4, seed=4)
    assert open_image(refined_image).size == (64, 64)
    assert refined_image != other_strength


def test_refine_with_too_few_steps_is_400(refined: httpx.Client) -> None:
    response = refined.post(
        "/v1/models/sdxl:predict", json={"instances": [small(strength=0.1, refiner_inference_steps=5)]}
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("refiner_inference_steps:")


def test_single_files_loaded_offline(refiner_server) -> None:
    log = refiner_server.log()
    assert "from single file" in log and "with configs from" in log
    assert log.count("loading StableDiffusionXL") == 2  # base and refiner, each exactly once
