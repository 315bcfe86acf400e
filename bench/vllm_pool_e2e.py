"""End to end: a vlm-gateway in front of a pool of two real vLLM CPU replicas.

Usage (repository root; vLLM's CPU build in its own venv, ``../shared/tools/vllm-cpu-setup.sh``)::

    .venv/bin/python bench/vllm_pool_e2e.py --vllm-venv /tmp/vllm-venv

It builds the ``tiny-vllm`` test model (random weights, attention vLLM's CPU kernels accept),
starts two ``vllm serve`` replicas on loopback one after the other (on 2 cores, starting both
at once only makes each slower), and a front gateway with the deployment's own settings
(``deploy/kubernetes/config/gateway.toml``) and routing (``.../routing.toml``), in which only the
pool's ``replicas_dns`` is replaced by the two replicas' URLs. Then:

1. a 3-turn conversation about one image: every turn must reach the same replica (affinity),
   whose prefix cache and multimodal cache must hit on the later turns (``image_uuids``);
2. one request about each of several other images: they spread over the replicas by their
   digests (either replica is fine; the report shows where each went);
3. the replica holding the conversation is killed (SIGKILL of its process group, as a node
   failure): the conversation's next turns and new requests must still succeed, on the other
   replica, and the gateway must eject the dead one.

Which replica served a request is read from the replicas themselves (``vllm:request_success_total``
in each one's ``/metrics``), and cross-checked with the gateway's ``vlm_gateway_pool_requests``.
Results: ``bench/results/vllm_pool_e2e.{json,md}`` (with the CPU and its flags); the exit status
is 1 when a check fails. Measured: 3.1 GB resident per replica, ~2.5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REPO,
    ServerProcess,
    data_url,
    free_port,
    machine_info,
    markdown_table,
    synthetic_image,
    wait_for_quiet,
    write_results,
)
from bench._targets import memory_mib, process_tree

MODEL_NAME = "tiny-vllm"
DEPLOY_CONFIG = REPO / "deploy" / "kubernetes" / "config"
BACKENDS_END = "# " + "-" * 93 + "\n# Per-task policy"
"""The line after the [backends] tables in the deployment's routing.toml."""
# The replicas' counters that say which one served a request and what its caches did.
VLLM_COUNTERS = (
    "vllm:request_success_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:mm_cache_queries_total",
    "vllm:mm_cache_hits_total",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-venv", type=Path, required=True, help="venv with vLLM's CPU build")
    parser.add_argument("--work", type=Path, help="model, configs and logs (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vllm_pool_e2e")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    vllm = args.vllm_venv / "bin" / "vllm"
    if not vllm.is_file():
        parser.error(f"{vllm} not found: run ../shared/tools/vllm-cpu-setup.sh {args.vllm_venv}")
    work = args.work or Path(tempfile.mkdtemp(prefix="vllm-pool-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {work}")
    run = PoolRun(vllm, work, args.max_tokens)
    try:
        data = run.execute()
    finally:
        run.stop()
    data["command"] = shlex.join([Path(sys.executable).name, *sys.argv])
    write_results(args.out, data, render(data))
    print(render(data))
    passed = all(c["ok"] for c in data["checks"])
    if passed and args.work is None:
        shutil.rmtree(work)  # the logs are kept when a check failed
    return 0 if passed else 1


class Replica:
    """One ``vllm serve`` in its own process group (so killing it takes its engine too)."""

    def __init__(self, index: int, vllm: Path, model: Path, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.label = f"127.0.0.1:{self.port}"
        self.argv = [
            str(vllm), "serve", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            "--max-model-len", "2048", "--dtype", "bfloat16", "--enforce-eager",
            "--served-model-name", MODEL_NAME,
        ]  # fmt: skip
        # KV cache in GiB: 1, the least, already holds 2M tokens of the tiny model. Each worker
        # on its own core: by default every replica's worker binds core 0 and they would take
        # turns on it (the log's "core ids=[...]" shows the binding).
        self.env = {
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": str(index % (os.cpu_count() or 1)),
        }
        self.log_path = work / f"vllm-{index}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        self.killed = False

    def wait_ready(self, timeout_s: float = 600.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"vLLM on {self.port} exited:\n{tail}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM on {self.port} not ready in {timeout_s:.0f}s")

    def counters(self) -> dict[str, float]:
        """The replica's cache and request counters, summed over their labels."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        totals = dict.fromkeys(VLLM_COUNTERS, 0.0)
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
        return totals

    def rss_mib(self) -> float:
        """Resident memory of the server and every process below it."""
        return memory_mib(process_tree(self.process.pid), "VmRSS") or 0

    def kill(self) -> None:
        """SIGKILL to the whole group: the server dies without closing its connections."""
        self.killed = True
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class PoolRun:
    """The replicas, the gateway, and the three scenarios with their checks."""

    def __init__(self, vllm: Path, work: Path, max_tokens: int) -> None:
        self.vllm, self.work, self.max_tokens = vllm, work, max_tokens
        self.replicas: list[Replica] = []
        self.gateway: ServerProcess | None = None
        self.client = httpx.Client(timeout=120)
        self.checks: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.routing: dict[str, Any] = {}
        self.conversation: list[dict[str, Any]] = []
        self.owner: str | None = None
        """The replica that served the conversation (None if it was not one replica)."""

    def execute(self) -> dict[str, Any]:
        from adapters.testing.models import build_test_model

        machine = machine_info()
        # Every flag, not only the ones torch's kernels hinge on: vLLM's CPU build picks its
        # kernels (AVX2, AVX-512, AMX) from them too.
        machine["cpuinfo_flags"] = _cpuinfo_flags()
        machine["vllm"] = (
            subprocess.run(
                [str(self.vllm), "--version"], capture_output=True, text=True, check=False
            )
            .stdout.strip()
            .splitlines()[-1:]
        )
        quiet_before = wait_for_quiet(max_wait_s=120)
        model = build_test_model(self.work / "model", "tiny-vllm")
        starts = []
        for index in range(2):
            replica = Replica(index, self.vllm, model, self.work)
            self.replicas.append(replica)
            starts.append(round(replica.wait_ready(), 1))
            print(f"vLLM replica {replica.label} ready in {starts[-1]} s")
        rss = [r.rss_mib() for r in self.replicas]
        self.start_gateway()
        self.conversation_stays_on_one_replica()
        self.other_images_spread()
        self.survives_a_dead_replica()
        return {
            "machine": machine,
            "load_before": quiet_before,
            "replicas": [
                {"label": r.label, "argv": shlex.join(r.argv), "env": r.env, "start_s": s}
                | {"rss_mib": m}
                for r, s, m in zip(self.replicas, starts, rss, strict=True)
            ],
            "gateway": self.gateway.command if self.gateway else None,
            "routing": self.routing,
            "requests": self.requests,
            "checks": self.checks,
        }

    # -- setup --------------------------------------------------------------------------------

    def start_gateway(self) -> None:
        """The deployment's gateway.toml and routing.toml, the pool given by its URLs."""
        routing = (DEPLOY_CONFIG / "routing.toml").read_text()
        deployed = tomllib.loads(routing)["backends"]
        (name,) = deployed
        upstream = dict(deployed[name]["upstream"])
        del upstream["replicas_dns"], upstream["dns_refresh_s"]
        upstream |= {"model": MODEL_NAME, "replicas": [r.url + "/v1" for r in self.replicas]}
        backend = {"profile": deployed[name]["profile"], "names": [MODEL_NAME]}
        start = routing.index(f"[backends.{name}]")
        tables = _toml_table(f"backends.{name}", backend)
        tables += _toml_table(f"backends.{name}.upstream", upstream)
        path = self.work / "routing.toml"
        path.write_text(routing[:start] + tables + "\n" + routing[routing.index(BACKENDS_END) :])
        self.routing = tomllib.loads(path.read_text())["backends"]
        port = free_port()
        self.gateway = ServerProcess(
            "vlm-gateway",
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(DEPLOY_CONFIG / "gateway.toml"),
            ],
            f"http://127.0.0.1:{port}",
            self.work / "gateway.log",
            "/ready",
            env={
                "VLM_GATEWAY_HOST": "127.0.0.1",
                "VLM_GATEWAY_PORT": str(port),
                "VLM_GATEWAY_ROUTER__ROUTING_FILE": str(path),
                "VLM_GATEWAY_FILES__DATA_DIR": str(self.work / "files"),
                "VLM_GATEWAY_LOGGING__FORMAT": "plain",
            },
        )
        ready = self.gateway.wait_ready(120)
        print(f"gateway ready in {ready:.1f} s")

    # -- scenarios ----------------------------------------------------------------------------

    def conversation_stays_on_one_replica(self) -> None:
        self.conversation.append(
            {"role": "user", "content": [_image(1), {"type": "text", "text": "What is shown?"}]}
        )
        served, before = [], self.counters()
        for turn, question in enumerate(["", "What colour is the large shape?", "And the text?"]):
            if question:
                self.conversation.append({"role": "user", "content": question})
            served.append(self.chat("conversation", f"turn {turn + 1}", self.conversation))
        after = self.counters()
        self.owner = served[0] if all(served) and len(set(served)) == 1 else None
        self.check("3 turns of one conversation on one replica", self.owner is not None, served)
        if self.owner:
            delta = _delta(before[self.owner], after[self.owner])
            self.check(
                "later turns hit the replica's prefix cache",
                delta["vllm:prefix_cache_hits_total"] > 0,
                {k.removeprefix("vllm:"): v for k, v in delta.items()},
            )
            # A hit either way; with image_uuids the replica looks the image up by our digest
            # instead of hashing its pixels first.
            self.check(
                "later turns find the image in the replica's multimodal cache",
                delta["vllm:mm_cache_hits_total"] >= 2,
                delta["vllm:mm_cache_hits_total"],
            )

    def other_images_spread(self) -> None:
        served = []
        for seed in range(2, 8):
            message = {"role": "user", "content": [_image(seed), {"type": "text", "text": "Hi"}]}
            served.append(self.chat("other images", f"image {seed}", [message]))
        counts = {r.label: served.count(r.label) for r in self.replicas}
        self.check("every other-image request answered", all(served), counts)
        # Before any failure each request went to one replica, the one that answered it.
        agree = [q["gateway_sent_to"] == [q["served_by"]] for q in self.requests]
        self.check("the gateway's pool metrics name the replica that answered", all(agree), agree)

    def survives_a_dead_replica(self) -> None:
        victim = next(r for r in self.replicas if r.label == self.owner) if self.owner else None
        victim = victim or self.replicas[0]
        survivor = next(r for r in self.replicas if r is not victim)
        victim.kill()
        print(f"killed replica {victim.label}")
        before = survivor.counters()
        served = []
        for turn, question in enumerate(["And the colours?", "Anything else?"], start=4):
            self.conversation.append({"role": "user", "content": question})
            served.append(self.chat("after kill", f"conversation turn {turn}", self.conversation))
        for seed in (1, 2, 3):
            message = {"role": "user", "content": [_image(seed), {"type": "text", "text": "Hi"}]}
            served.append(self.chat("after kill", f"image {seed}", [message]))
        answered = _delta(before, survivor.counters())["vllm:request_success_total"]
        self.check(
            "every request after the kill succeeds on the surviving replica",
            all(s == survivor.label for s in served) and answered == len(served),
            {"served_by": served, "survivor_answered": answered},
        )
        # Probes every probe_interval_s; eject_after failures in a row eject (failed requests
        # count too, so it may already be out).
        upstream = next(iter(self.routing.values()))["upstream"]
        deadline = time.monotonic() + upstream["probe_interval_s"] * (upstream["eject_after"] + 2)
        healthy = self.pool_metric("vlm_gateway_pool_replica_healthy", victim.label)
        while healthy != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            healthy = self.pool_metric("vlm_gateway_pool_replica_healthy", victim.label)
        self.check(
            "the gateway ejects the dead replica",
            healthy == 0,
            {
                "healthy": healthy,
                "ejections": self.pool_metric("vlm_gateway_pool_ejections_total", victim.label),
                "errors": self.pool_metric("vlm_gateway_pool_errors_total", victim.label),
            },
        )

    # -- helpers ------------------------------------------------------------------------------

    def chat(self, scenario: str, step: str, messages: list[dict[str, Any]]) -> str | None:
        """One request; returns the label of the replica that answered it (None if it failed)."""
        assert self.gateway is not None
        before = self.counters()
        gateway_before = self.pool_requests()
        body = {
            "model": MODEL_NAME,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        start = time.monotonic()
        response = self.client.post(self.gateway.base_url + "/v1/chat/completions", json=body)
        elapsed = time.monotonic() - start
        after = self.counters()
        grew = [
            label
            for label in after
            if after[label]["vllm:request_success_total"]
            > before.get(label, {}).get("vllm:request_success_total", 0)
        ]
        gateway_after = self.pool_requests()
        sent_to = [r for r in gateway_after if gateway_after[r] > gateway_before.get(r, 0)]
        ok = response.status_code == 200
        if ok and messages is self.conversation:
            answer = response.json()["choices"][0]["message"]["content"]
            self.conversation.append({"role": "assistant", "content": answer})
        served = grew[0] if ok and len(grew) == 1 else None
        # What the serving replica's caches gave this request: prompt tokens found in its prefix
        # cache, images found in its multimodal cache.
        cached = _delta(before.get(served, {}), after[served]) if served else {}
        self.requests.append(
            {
                "scenario": scenario,
                "step": step,
                "status": response.status_code,
                "seconds": round(elapsed, 3),
                "served_by": served,
                "gateway_sent_to": sent_to,
                # The router's task: its instruction opens the prompt (a system message).
                "task": response.headers.get("x-gateway-task"),
                "prompt_tokens": response.json()["usage"]["prompt_tokens"] if ok else None,
                "prefix_cache_hit_tokens": cached.get("vllm:prefix_cache_hits_total"),
                "mm_cache_hits": cached.get("vllm:mm_cache_hits_total"),
                "error": None if ok else response.text[:300],
            }
        )
        print(f"  {scenario} / {step}: {response.status_code} in {elapsed:.2f} s on {served}")
        return served

    def counters(self) -> dict[str, dict[str, float]]:
        return {r.label: r.counters() for r in self.replicas if not r.killed}

    def pool_requests(self) -> dict[str, float]:
        return {
            label: self.pool_metric("vlm_gateway_pool_requests_total", label) or 0.0
            for label in (r.label for r in self.replicas)
        }

    def pool_metric(self, name: str, replica: str) -> float | None:
        assert self.gateway is not None
        text = self.client.get(self.gateway.base_url + "/metrics").text
        for line in text.splitlines():
            if line.startswith(name + "{") and f'replica="{replica}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    def check(self, what: str, ok: bool, detail: Any) -> None:
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}: {what}: {json.dumps(detail)}")

    def stop(self) -> None:
        self.client.close()
        if self.gateway is not None:
            self.gateway.stop()
        for replica in self.replicas:
            replica.stop()


def _cpuinfo_flags() -> list[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return sorted(line.split(":", 1)[1].split())
    return []


def _image(seed: int) -> dict[str, Any]:
    # 300 visual tokens: the prompt spans whole KV blocks (128 tokens on vLLM's CPU backend),
    # which is what its prefix cache keeps and reuses.
    return {"type": "image_url", "image_url": {"url": data_url(synthetic_image(640, 480, seed))}}


def _delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def _toml_table(name: str, table: Mapping[str, Any]) -> str:
    """A flat TOML table; JSON spells strings, numbers and string lists as TOML does."""
    lines = [f"[{name}]"]
    for key, value in table.items():
        lines.append(
            f"{key} = {str(value).lower() if isinstance(value, bool) else json.dumps(value)}"
        )
    return "\n".join(lines) + "\n\n"


def render(data: Mapping[str, Any]) -> str:
    machine = data["machine"]
    replicas = [
        [r["label"], r["start_s"], r["rss_mib"], " ".join(f"{k}={v}" for k, v in r["env"].items())]
        for r in data["replicas"]
    ]
    columns = {
        "scenario": "scenario",
        "request": "step",
        "status": "status",
        "s": "seconds",
        "task": "task",
        "prompt tokens": "prompt_tokens",
        "prefix-cache hits (tokens)": "prefix_cache_hit_tokens",
        "image-cache hits": "mm_cache_hits",
        "answered by": "served_by",
    }
    requests = [[q[key] for key in columns.values()] for q in data["requests"]]
    checks = [
        [c["check"], "pass" if c["ok"] else "FAIL", f"`{json.dumps(c['detail'])}`"]
        for c in data["checks"]
    ]
    return "\n".join(
        [
            "# vLLM pool end to end",
            "",
            f"`{data.get('command', '')}`, {machine['date_utc']} UTC",
            "",
            f"CPU: {machine['cpu']} ({machine['cores']} cores, {machine['memory_gib']} GiB); "
            f"flags: {', '.join(machine['cpu_flags']) or 'none of avx2/avx512/amx'}; "
            f"vLLM {' '.join(machine.get('vllm') or ['?'])}; "
            f"others' CPU before: {data['load_before']['busy_pct_before']}%",
            "",
            "A front vlm-gateway (deploy/kubernetes/config/gateway.toml and routing.toml, the "
            "pool given as `replicas`) in front of two `vllm serve` CPU replicas of the "
            'random-weight `tiny-vllm` model. "answered by" is the replica whose '
            "`vllm:request_success_total` grew; the cache hits are that replica's counters' "
            "growth (vLLM's CPU backend caches prefixes in whole blocks of 128 tokens).",
            "",
            markdown_table(["replica", "start (s)", "RSS (MiB)", "env"], replicas),
            "",
            markdown_table(list(columns), requests),
            "",
            markdown_table(["check", "result", "detail"], checks),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
