"""The flow of ComfyUI's `script_examples/websockets_api_example.py`, with websocket-client:
connect `/ws?clientId=<uuid>`, POST /prompt with that `client_id`, read the WebSocket until
`executing` with `node: null` for our `prompt_id`, then GET /history/{prompt_id} and GET /view
for every image it lists. Our own code following the script's steps (bare routes, as the script
uses them, and the `/api/` routes its `_ws_images` sibling and ComfyUI's frontend use), plus
checks on the order of the events seen on the way.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid

import pytest
import websocket  # websocket-client

from harness import png_pixels

WS_TIMEOUT = 300


def queue_prompt(base: str, prompt: dict, client_id: str) -> dict:
    data = json.dumps({"prompt": prompt, "client_id": client_id}).encode("utf-8")
    req = urllib.request.Request(f"{base}/prompt", data=data)
    return json.loads(urllib.request.urlopen(req).read())


def get_history(base: str, prompt_id: str) -> dict:
    with urllib.request.urlopen(f"{base}/history/{prompt_id}") as response:
        return json.loads(response.read())


def get_image(base: str, filename: str, subfolder: str, folder_type: str) -> bytes:
    query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
    with urllib.request.urlopen(f"{base}/view?{query}") as response:
        return response.read()


def follow(ws: websocket.WebSocket, prompt_id: str) -> tuple[list[dict], int]:
    """Messages up to and including `executing {node: null}` for `prompt_id`, and the number of
    binary frames seen on the way."""
    messages, binary = [], 0
    while True:
        out = ws.recv()
        if isinstance(out, str):
            message = json.loads(out)
            messages.append(message)
            if message["type"] == "executing":
                data = message["data"]
                if data["node"] is None and data["prompt_id"] == prompt_id:
                    return messages, binary
        else:
            binary += 1


def drain(ws: websocket.WebSocket, seconds: float) -> list[dict]:
    ws.settimeout(seconds)
    messages = []
    try:
        while True:
            out = ws.recv()
            if isinstance(out, str):
                messages.append(json.loads(out))
    except websocket.WebSocketTimeoutException:
        return messages


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_script_example_flow(server, tiny_prompt, prefix):
    base = f"{server.url}{prefix}"
    client_id = str(uuid.uuid4())
    tiny_prompt["7"]["inputs"]["noise_seed"] = 100 + len(prefix)

    ws = websocket.WebSocket()
    ws.settimeout(WS_TIMEOUT)
    ws.connect(f"ws://{server.host}{prefix}/ws?clientId={client_id}")
    # Another client, to check that execution events go only to the client that queued.
    observer = websocket.WebSocket()
    observer.settimeout(WS_TIMEOUT)
    observer.connect(f"ws://{server.host}{prefix}/ws?clientId={uuid.uuid4()}")
    try:
        hello = json.loads(ws.recv())
        assert hello["type"] == "status"
        assert hello["data"]["sid"] == client_id
        assert isinstance(hello["data"]["status"]["exec_info"]["queue_remaining"], int)

        answer = queue_prompt(base, tiny_prompt, client_id)
        prompt_id = answer["prompt_id"]
        assert answer["node_errors"] == {}
        assert isinstance(answer["number"], (int, float))

        messages, binary = follow(ws, prompt_id)
        # The script's own steps: history, then every image of every output.
        history = get_history(base, prompt_id)[prompt_id]
        output_images = {}
        for node_id, node_output in history["outputs"].items():
            if "images" in node_output:
                output_images[node_id] = [
                    get_image(base, image["filename"], image["subfolder"], image["type"])
                    for image in node_output["images"]
                ]
        seen_by_observer = drain(observer, 1.0)
    finally:
        ws.close()
        observer.close()

    assert list(output_images) == ["13"]
    assert [png_pixels(data)[0] for data in output_images["13"]] == [(64, 64)]
    assert binary == 0, "binary frames were sent without previews being asked for"
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True

    ours = [m for m in messages if m["data"].get("prompt_id") == prompt_id]
    kinds = [m["type"] for m in ours]
    assert kinds[0] == "execution_start", kinds
    assert kinds[-1] == "executing" and ours[-1]["data"]["node"] is None
    assert kinds[-2] == "execution_success", kinds
    assert "execution_error" not in kinds and "execution_interrupted" not in kinds
    if "execution_cached" in kinds:
        assert kinds.index("execution_cached") < kinds.index("executing")

    executing = [m["data"]["node"] for m in ours if m["type"] == "executing"][:-1]
    assert set(executing) <= set(tiny_prompt), executing
    assert "11" in executing and "13" in executing  # the sampler and SaveImage ran

    progress = [m["data"] for m in ours if m["type"] == "progress"]
    assert progress, "no progress events for the sampler's steps"
    assert all(p["node"] == "11" for p in progress)
    assert progress[-1]["value"] == progress[-1]["max"] == tiny_prompt["9"]["inputs"]["steps"]

    executed = [m["data"] for m in ours if m["type"] == "executed"]
    assert [e["node"] for e in executed] == ["13"]
    assert executed[0]["output"]["images"] == history["outputs"]["13"]["images"]

    status_in_history = [name for name, _ in history["status"]["messages"]]
    assert status_in_history[0] == "execution_start" and "execution_success" in status_in_history

    leaked = [m for m in seen_by_observer
              if m["type"] != "status" and m["data"].get("prompt_id") == prompt_id]
    assert leaked == [], f"another client got this prompt's events: {leaked[:3]}"
    # Its own status on connect, then at least one broadcast when the queue changed.
    statuses = [m for m in seen_by_observer if m["type"] == "status"]
    assert len(statuses) >= 2, f"queue changes were not broadcast: {statuses}"
