"""comfy-catapult 3.0.0's client and its pydantic models of ComfyUI's responses, unmodified.

Its `ComfyAPIClient` is driven through a whole job (system stats, object info, queue a prompt
with a client-chosen `prompt_id`, queue, history, upload, view). Each raw response is also
validated against catapult's models in pydantic's strict mode (the client itself falls back to
lax parsing with a warning), so a number where an int belongs, a missing `description` in an
`/object_info` entry or a queue item that is not ComfyUI's 5-tuple fails here.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.request
import uuid

from comfy_catapult.api_client import ComfyAPIClient
from comfy_catapult.comfy_schema import (
    APIHistory,
    APIObjectInfo,
    APIPromptInfo,
    APIQueueInfo,
    APISystemStats,
    APIUploadImageResp,
    APIWorkflow,
    APIWorkflowTicket,
)
from PIL import Image

from harness import png_pixels


def strict(model, raw: bytes):
    """Validates a response body against a catapult model, strictly (JSON mode)."""
    return model.model_validate_json(raw, strict=True)


def get_raw(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.headers.get_content_type() == "application/json", resp.headers
        return resp.read()


def test_catapult_client_runs_a_job_and_every_response_fits_its_models(server, tiny_prompt):
    async def job():
        async with ComfyAPIClient(comfy_api_url=f"{server.url}/") as client:
            stats = await client.GetSystemStats()
            info = await client.GetObjectInfo()
            before = await client.GetPrompt()

            # Three prompts at once, so that /queue is seen holding items.
            ids = []
            for seed in (21, 22, 23):
                tiny_prompt["7"]["inputs"]["noise_seed"] = seed
                tiny_prompt["9"]["inputs"]["steps"] = 8
                prompt_id = str(uuid.uuid4())
                ticket = await client.PostPrompt(
                    prompt_workflow=json.loads(json.dumps(tiny_prompt)),
                    prompt_id=prompt_id,
                    client_id=str(uuid.uuid4()),
                )
                assert ticket.prompt_id == prompt_id
                assert not ticket.node_errors
                ids.append(prompt_id)
            queue_raw = get_raw(f"{server.url}/queue")
            queue = await client.GetQueue()

            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                history = await client.GetHistory(prompt_id=ids[-1])
                entry = history.root.get(ids[-1])
                if entry and entry.status and entry.status.completed:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the prompts did not finish")
            recent = await client.GetHistory(max_items=2)

            png = io.BytesIO()
            Image.new("RGB", (8, 8), (1, 2, 3)).save(png, format="PNG")
            name = f"catapult-{uuid.uuid4().hex[:8]}.png"
            upload_raw = await client.PostUploadImageRaw(
                folder_type="input", subfolder="catapult", filename=name,
                data=png.getvalue(), overwrite=True,
            )
            upload = strict(APIUploadImageResp, json.dumps(upload_raw))
            viewed = await client.GetView(
                folder_type=upload.type, subfolder=upload.subfolder, filename=upload.name
            )
            return (stats, info, before, ids, queue_raw, queue, recent, name, upload, viewed,
                    png.getvalue())

    (stats, info, before, ids, queue_raw, queue, recent, name, upload, viewed,
     png) = asyncio.run(job())

    assert stats.system is not None and stats.devices is not None
    assert "SamplerCustomAdvanced" in info.root
    assert before.exec_info is not None and before.exec_info.queue_remaining is not None

    queued = strict(APIQueueInfo, queue_raw)
    items = queued.queue_running + queued.queue_pending
    assert items, "none of the three prompts was in /queue right after queueing"
    assert {item.prompt_id for item in items} <= set(ids)
    assert all(item.outputs_to_execute == ["13"] for item in items)
    assert len(queue.queue_running) <= 1

    assert len(recent.root) <= 2 and ids[-1] in recent.root
    assert (upload.name, upload.subfolder, upload.type) == (name, "catapult", "input")
    assert viewed == png

    # Strict validation of every response shape catapult models.
    strict(APISystemStats, get_raw(f"{server.url}/system_stats"))
    strict(APIObjectInfo, get_raw(f"{server.url}/object_info"))
    strict(APIPromptInfo, get_raw(f"{server.url}/prompt"))
    strict(APIQueueInfo, get_raw(f"{server.url}/queue"))
    for prompt_id in ids:
        history = strict(APIHistory, get_raw(f"{server.url}/history/{prompt_id}"))
        entry = history.root[prompt_id]
        assert entry.status.status_str == "success" and entry.status.completed is True
        assert entry.prompt.prompt_id == prompt_id
        APIWorkflow.model_validate(entry.prompt.prompt.root)
        image = entry.outputs["13"].root["images"][0]
        query = f"filename={image['filename']}&subfolder={image['subfolder']}&type={image['type']}"
        with urllib.request.urlopen(f"{server.url}/view?{query}") as resp:
            assert png_pixels(resp.read())[0] == (64, 64)
    strict(APIHistory, get_raw(f"{server.url}/history?max_items=3"))

    ticket_raw = json.dumps({"prompt": tiny_prompt}).encode()
    req = urllib.request.Request(f"{server.url}/prompt", data=ticket_raw)
    with urllib.request.urlopen(req) as resp:
        ticket = strict(APIWorkflowTicket, resp.read())
    # The prompt just queued (same as the last above but for the seed: cached or quick).
    server.wait_history(ticket.prompt_id)
