"""comfy-api-simplified 1.6.0, unmodified, against `veetance serve`.

Its `queue_and_wait_images` posts the prompt, then opens the WebSocket, returns on `executing
{node: null}` for its prompt or on a `status` with `queue_remaining == 0`, reads /history and
downloads each image with /view. Any binary frame would be taken as an output image instead, so
these tests also show that the server sends no preview frames unless asked.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper
from comfy_api_simplified.exceptions import ComfyApiError
from PIL import Image

from harness import png_pixels, with_timeout

RUN_TIMEOUT = 300


def test_queue_and_wait_images_downloads_the_saved_png(server, tiny_prompt):
    api = ComfyApiWrapper(server.url)
    workflow = ComfyWorkflowWrapper(tiny_prompt)
    workflow.set_node_param("RandomNoise", "noise_seed", 7)
    workflow.set_node_param("Positive Prompt", "text", "a lighthouse in a storm")

    images = with_timeout(lambda: api.queue_and_wait_images(workflow, "Save Image"), RUN_TIMEOUT)

    assert len(images) == 1, images.keys()
    ((filename, data),) = images.items()
    # Keys are history file names; binary frames would have come back keyed "0", "1", ...
    assert filename.startswith("klein-tiny") and filename.endswith(".png"), filename
    size, mode, _ = png_pixels(data)
    assert size == (64, 64)
    assert mode in ("RGB", "RGBA")
    on_disk = [p for p in server.out_dir.rglob(filename)]
    assert len(on_disk) == 1 and on_disk[0].read_bytes() == data


def test_queue_prompt_and_wait_then_history_and_view(server, tiny_prompt):
    api = ComfyApiWrapper(server.url)
    tiny_prompt["7"]["inputs"]["noise_seed"] = 8

    prompt_id, frames = with_timeout(
        lambda: asyncio.run(api.queue_prompt_and_wait(tiny_prompt)), RUN_TIMEOUT
    )
    assert frames == [], "binary WebSocket frames were sent without previews being asked for"

    history = api.get_history(prompt_id)
    assert list(history) == [prompt_id]
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success"
    assert entry["status"]["completed"] is True
    number, stored_id, stored_prompt, extra_data, outputs_to_execute = entry["prompt"]
    assert stored_id == prompt_id
    assert set(stored_prompt) == set(tiny_prompt)
    assert isinstance(extra_data, dict)
    assert outputs_to_execute == ["13"]
    images = entry["outputs"]["13"]["images"]
    assert len(images) == 1
    image = images[0]
    assert image["type"] == "output"
    data = api.get_image(image["filename"], image["subfolder"], image["type"])
    assert png_pixels(data)[0] == (64, 64)


def test_same_prompt_gives_the_same_pixels(server, tiny_prompt):
    api = ComfyApiWrapper(server.url)
    tiny_prompt["7"]["inputs"]["noise_seed"] = 9
    first = with_timeout(lambda: api.queue_and_wait_images(tiny_prompt, "Save Image"), RUN_TIMEOUT)
    tiny_prompt["7"]["inputs"]["noise_seed"] = 10
    other = with_timeout(lambda: api.queue_and_wait_images(tiny_prompt, "Save Image"), RUN_TIMEOUT)
    tiny_prompt["7"]["inputs"]["noise_seed"] = 9
    again = with_timeout(lambda: api.queue_and_wait_images(tiny_prompt, "Save Image"), RUN_TIMEOUT)
    (a,), (b,), (c,) = first.values(), other.values(), again.values()
    assert png_pixels(a)[2] == png_pixels(c)[2]
    assert png_pixels(a)[2] != png_pixels(b)[2], "a different seed gave the same picture"


def test_upload_image_then_view_it(server, tmp_path):
    api = ComfyApiWrapper(server.url)
    name = f"upload-{uuid.uuid4().hex[:8]}.png"
    path = tmp_path / name
    Image.new("RGB", (24, 16), (200, 40, 10)).save(path)

    first = api.upload_image(path, subfolder="clients")
    assert (first["name"], first["subfolder"], first["type"]) == (name, "clients", "input")
    assert api.get_image(first["name"], first["subfolder"], first["type"]) == path.read_bytes()
    assert (server.input_dir / "clients" / name).read_bytes() == path.read_bytes()

    # The same bytes again: the same name. Other bytes under the same name: a new name.
    assert api.upload_image(path, subfolder="clients")["name"] == name
    Image.new("RGB", (24, 16), (10, 40, 200)).save(path)
    renamed = api.upload_image(path, subfolder="clients")
    assert renamed["name"] != name
    assert api.get_image(renamed["name"], "clients", "input") == path.read_bytes()


def test_object_info_describes_every_class_of_the_prompt(server, tiny_prompt):
    api = ComfyApiWrapper(server.url)
    info = api.get_object_info()
    for node in tiny_prompt.values():
        entry = info.get(node["class_type"])
        assert entry is not None, f"{node['class_type']} missing from /object_info"
        for key in ("input", "output", "output_is_list", "output_name", "name", "display_name",
                    "description", "category", "output_node"):
            assert key in entry, f"{node['class_type']} lacks {key!r}"
    assert info["SaveImage"]["output_node"] is True

    one = api.get_object_info("UNETLoader")
    assert list(one) == ["UNETLoader"]
    spec = one["UNETLoader"]["input"]["required"]["unet_name"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert "flux-2-klein-4b.safetensors" in options
    assert "flux-2-klein-base-4b.safetensors" in options


def test_system_stats_embeddings_queue_and_interrupt(server):
    api = ComfyApiWrapper(server.url)
    stats = api.get_system_stats()
    system = stats["system"]
    assert isinstance(system["os"], str)
    assert system["ram_total"] > 0 and 0 <= system["ram_free"] <= system["ram_total"]
    assert isinstance(stats["devices"], list)

    assert isinstance(api.get_embeddings(), list)

    queue = api.get_queue()
    assert queue["queue_running"] == [] and queue["queue_pending"] == []
    with pytest.raises(ValueError):
        api.get_queue_size_before(str(uuid.uuid4()))

    api.interrupt()  # nothing running: still 200


def test_invalid_prompt_is_refused_with_a_comfy_api_error(server, tiny_prompt):
    api = ComfyApiWrapper(server.url)
    tiny_prompt["4"]["class_type"] = "NoSuchNode"
    with pytest.raises(ComfyApiError, match="400"):
        api.queue_prompt(tiny_prompt)
