"""jupyterhub-nomad-spawner's own code drives the spawn flow against the agent: its job
template rendered by its job factory, parsed and registered by its NomadService (an httpx
client), its job-status wait, then the notebook's address read from the allocation (this
spawner reads it from Consul, which is not here) and dialled, and its delete.

The template's docker task is swapped for raw_exec running a stand-in notebook (python's
http.server on NOMAD_HOST_PORT_notebook; with `to = 8888`, NOMAD_PORT_notebook is the
mapped-to port, as in Nomad): nomadlet runs raw_exec tasks only.

Usage: jupyterhub_flow.py <agent port>
"""
import asyncio
import json
import logging
import sys
import time
import urllib.request

from httpx import AsyncClient
from jupyterhub_nomad_spawner.job_factory import JobData, create_job
from jupyterhub_nomad_spawner.nomad.nomad_service import NomadService

PORT = sys.argv[1]
BASE = f"http://127.0.0.1:{PORT}"
DEADLINE_S = 60


def get(path):
    with urllib.request.urlopen(BASE + path, timeout=10) as r:
        return json.loads(r.read())


def stand_in(hcl):
    """The docker task of the spawner's template, as raw_exec."""
    start = hcl.index('driver = "docker"')
    end = hcl.index("env {", start)
    raw = (
        'driver = "raw_exec"\n'
        "            config {\n"
        '                command = "python3"\n'
        '                args = ["-m", "http.server", "${NOMAD_HOST_PORT_notebook}", '
        '"--bind", "${NOMAD_HOST_IP_notebook}"]\n'
        "            }\n            "
    )
    return hcl[:start] + raw + hcl[end:]


async def main():
    log = logging.getLogger("flow")
    hcl = create_job(
        JobData(
            job_name="jupyter-notebook-alice",
            username="alice",
            notebook_name="nb1",
            service_name="jupyter-notebook-alice",
            env={"JUPYTERHUB_API_TOKEN": "t0k3n", "JUPYTERHUB_USER": "alice"},
            args=["--ip=0.0.0.0"],
            datacenters=["dc1"],
            memory=256,
            volume_data=None,
            policies=None,
        )
    )
    hcl = stand_in(hcl)
    async with AsyncClient(base_url=BASE) as client:
        service = NomadService(client=client, log=log)
        job_id = await service.schedule_job(hcl)
        assert job_id == "jupyter-notebook-alice", job_id
        # The spawner's _ensure_running: the job's Status until "running".
        deadline = time.time() + DEADLINE_S
        while (status := await service.job_status(job_id)) != "running":
            assert status != "dead", "job died"
            assert time.time() < deadline, f"job status stuck at {status!r}"
            await asyncio.sleep(0.2)

        job = get(f"/v1/job/{job_id}")
        assert job["Meta"]["jupyterhub_user"] == "alice", job["Meta"]
        assert job["TaskGroups"][0]["Services"][0]["Name"] == "jupyter-notebook-alice"

        # The notebook's address from its allocation, as a spawner without Consul reads it.
        allocs = get(f"/v1/job/{job_id}/allocations")
        assert len(allocs) == 1, allocs
        alloc = get(f"/v1/allocation/{allocs[0]['ID']}")
        ports = alloc["AllocatedResources"]["Shared"]["Ports"]
        nb = [p for p in ports if p["Label"] == "notebook"]
        assert len(nb) == 1, ports
        host, port = nb[0]["HostIP"], nb[0]["Value"]
        assert 20000 <= port <= 32000, port
        assert nb[0]["To"] == 8888, nb[0]
        url = f"http://{host}:{port}/"
        deadline = time.time() + DEADLINE_S
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError as e:
                assert time.time() < deadline, f"{url}: {e}"
                time.sleep(0.2)

        await service.delete_job(job_id)
        deadline = time.time() + DEADLINE_S
        while (status := await service.job_status(job_id)) != "dead":
            assert time.time() < deadline, f"stopped job still {status!r}"
            await asyncio.sleep(0.2)
    print(f"spawned and reached the notebook at {url}; stopped")


asyncio.run(main())
