"""The shared queue (docs/distributed.md) with real processes: Debian's `nats-server -js` on
loopback, `veetance serve --queue` as the front door, `veetance worker`s behind it, driven
through ComfyUI's HTTP API with the tiny models.

- 3 workers and 60 prompts: every prompt completes, each with exactly one output, readable
  through the front door's /view (from the queue's object store).
- A worker killed with SIGKILL mid-job: another worker finishes the job.
- The front door killed and restarted mid-run: nothing is lost.
- A job that stops every worker that takes it ends failed after max_deliver; the others
  complete.
"""

from __future__ import annotations

import collections
import signal
import time

import pytest

import harness
from cluster import start_cluster

# A 64x64 run takes ~0.2 s; this one several seconds, long enough to be killed mid-run.
LONG = {"width": 512, "height": 512, "steps": 40}


def prompt(seed: int, long: bool = False) -> dict:
    p = harness.load_prompt()
    p["7"]["inputs"]["noise_seed"] = seed
    if long:
        p["9"]["inputs"].update(LONG)
        p["10"]["inputs"].update(width=LONG["width"], height=LONG["height"])
    return p


def submit(front, seed: int, long: bool = False) -> str:
    answer = harness.http_json(f"{front.url}/prompt", {"prompt": prompt(seed, long)})
    return answer["prompt_id"]


def wait_all(cluster, ids: list[str], timeout: float) -> dict[str, dict]:
    """Polls /history until every id is in it; the entries by id."""
    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = harness.http_json(f"{cluster.front.url}/history")
        for pid in ids:
            if pid in history:
                done[pid] = history[pid]
        if len(done) == len(ids):
            return done
        time.sleep(0.25)
    missing = [i for i in ids if i not in done]
    raise AssertionError(f"{len(missing)} of {len(ids)} prompts unfinished after {timeout} s "
                         f"(first: {missing[:3]})\n{cluster.logs()}")


def job(cluster, pid: str) -> dict:
    return harness.http_json(f"{cluster.front.url}/api/jobs/{pid}")


def wait_running(cluster, pid: str, timeout: float = 120) -> dict:
    """Waits until the job runs; its record (with the worker's `name:pid`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = job(cluster, pid)
        if j.get("status") == "in_progress" and j.get("worker"):
            return j
        time.sleep(0.05)
    raise AssertionError(f"job {pid} did not start within {timeout} s\n{cluster.logs()}")


def the_one_image(cluster, entry: dict) -> bytes:
    images = [img for node in entry["outputs"].values() for img in node.get("images", [])]
    assert len(images) == 1, entry["outputs"]
    img = images[0]
    data = _view(cluster, img)
    assert harness.png_pixels(data)[0][0] > 0
    return data


def _view(cluster, img: dict) -> bytes:
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode(
        {"filename": img["filename"], "subfolder": img["subfolder"], "type": img["type"]}
    )
    with urllib.request.urlopen(f"{cluster.front.url}/view?{query}", timeout=30) as resp:
        return resp.read()


@pytest.fixture
def cluster3(tmp_path, models_dir):
    # Each worker has its own output folder: /view and the OpenAI route can only find outputs
    # through the queue's object store, and the workers' counters give clashing names.
    c = start_cluster(tmp_path / "cluster", models_dir, workers=3, shared_out=False,
                      front_args=("--default-workflow", str(harness.FIXTURES / "klein_tiny_api.json")))
    yield c
    c.stop()


def test_three_workers_run_sixty_prompts_each_with_one_output(cluster3, timings):
    start = time.monotonic()
    ids = [submit(cluster3.front, seed) for seed in range(1000, 1060)]
    assert len(set(ids)) == 60
    done = wait_all(cluster3, ids, timeout=600)
    timings["60 tiny prompts, 3 workers"] = time.monotonic() - start

    names = set()
    by_worker = collections.Counter()
    for pid in ids:
        entry = done[pid]
        assert entry["status"]["status_str"] == "success", entry["status"]
        data = the_one_image(cluster3, entry)
        (img,) = [i for n in entry["outputs"].values() for i in n["images"]]
        names.add((img["subfolder"], img["filename"]))
        assert len(data) > 100
        by_worker[job(cluster3, pid)["worker"].split(":")[0]] += 1
    assert len(names) == 60, "two prompts share an output name"
    assert len(by_worker) >= 2, f"one worker ran everything: {by_worker}"
    assert not any((cluster3.root / "front" / "out").iterdir()), "outputs went to the front door"
    queue = harness.http_json(f"{cluster3.front.url}/queue")
    assert queue == {"queue_running": [], "queue_pending": []}


def test_the_openai_route_answers_from_the_object_store(cluster3):
    import base64

    answer = harness.http_json(f"{cluster3.front.url}/v1/images/generations",
                               {"prompt": "a lighthouse", "n": 2, "size": "64x64"}, timeout=300)
    assert len(answer["data"]) == 2
    for item in answer["data"]:
        assert harness.png_pixels(base64.b64decode(item["b64_json"]))[0] == (64, 64)


def test_a_worker_killed_mid_job_has_its_job_finished_by_another(cluster3):
    pid = submit(cluster3.front, 7, long=True)
    running = wait_running(cluster3, pid)
    victim = cluster3.worker_by_pid(int(running["worker"].rsplit(":", 1)[1]))
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()

    (entry,) = wait_all(cluster3, [pid], timeout=300).values()
    assert entry["status"]["status_str"] == "success", entry["status"]
    the_one_image(cluster3, entry)
    finished_by = job(cluster3, pid)["worker"]
    assert finished_by != running["worker"], "the killed worker cannot have finished it"


def test_front_door_restarted_mid_run_loses_nothing(cluster3):
    ids = [submit(cluster3.front, seed) for seed in range(2000, 2020)]
    ids.append(submit(cluster3.front, 2020, long=True))
    wait_running(cluster3, ids[0])
    port = cluster3.front.port
    cluster3.front.proc.send_signal(signal.SIGKILL)
    cluster3.front.proc.wait()
    # Prompts keep running behind it; a new front door on the same port sees them all.
    time.sleep(1)
    cluster3.start_front(port=port)
    ids += [submit(cluster3.front, seed) for seed in range(2100, 2105)]
    done = wait_all(cluster3, ids, timeout=600)
    for pid in ids:
        assert done[pid]["status"]["status_str"] == "success", done[pid]["status"]
        the_one_image(cluster3, done[pid])


def test_a_job_that_stops_every_worker_fails_after_max_deliver(cluster3):
    """The poison job: whichever worker starts it is killed (as the kernel's OOM killer
    would), and a fresh worker takes its place. After MAX_ATTEMPTS (3) runs the next
    delivery writes it off; the other prompts complete meanwhile."""
    poison = submit(cluster3.front, 13, long=True)
    others = [submit(cluster3.front, seed) for seed in range(3000, 3010)]
    killed = []
    deadline = time.monotonic() + 240
    while len(killed) < 3:
        assert time.monotonic() < deadline, f"killed {killed} so far\n{cluster3.logs()}"
        running = wait_running(cluster3, poison, timeout=180)
        if running["worker"] in killed:
            time.sleep(0.05)
            continue
        victim = cluster3.worker_by_pid(int(running["worker"].rsplit(":", 1)[1]))
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        killed.append(running["worker"])
        cluster3.start_worker()

    done = wait_all(cluster3, [poison, *others], timeout=300)
    status = done[poison]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    kinds = [m[0] for m in status["messages"]]
    assert "execution_error" in kinds
    error = dict(status["messages"])["execution_error"]
    assert error["exception_type"] == "WorkerStopped"
    assert "3 times" in error["exception_message"]
    assert done[poison]["outputs"] == {}
    for pid in others:
        assert done[pid]["status"]["status_str"] == "success"
        the_one_image(cluster3, done[pid])


def test_workers_prefer_jobs_for_the_models_they_hold(tmp_path, models_dir):
    """Two models (two file names: different subjects, different consumers), jobs submitted
    alternating A, B, A, B, ... With plain FIFO every job would switch a worker's model; with
    affinity a worker stays on the model it holds while its jobs last (looking elsewhere after
    8 in a row, so neither model starves)."""
    cluster = start_cluster(tmp_path / "cluster", models_dir, workers=2)
    try:
        ids = {}
        for seed in range(4000, 4024):
            p = prompt(seed)
            model = "flux-2-klein-4b.safetensors" if seed % 2 else "flux-2-klein-base-4b.safetensors"
            p["1"]["inputs"]["unet_name"] = model
            answer = harness.http_json(f"{cluster.front.url}/prompt", {"prompt": p})
            ids[answer["prompt_id"]] = model
        done = wait_all(cluster, list(ids), timeout=300)
        runs = collections.defaultdict(list)
        for pid, model in ids.items():
            assert done[pid]["status"]["status_str"] == "success"
            j = job(cluster, pid)
            runs[j["worker"]].append((j["execution_start_time"], model))
        switches = 0
        for worker, jobs in runs.items():
            models = [m for _, m in sorted(jobs)]
            switches += sum(a != b for a, b in zip(models, models[1:]))
        print(f"model switches: {switches}; jobs per worker: {[len(j) for j in runs.values()]}")
        # FIFO would give ~23 switches; affinity a handful (streak checks, the tail).
        assert switches <= 8, f"{switches} model switches: {dict(runs)}"
    finally:
        cluster.stop()
