"""Workflow runners (``scheduling_parameters.supervisor``) take at most a share of the cluster, as
dispatch-cloud limits them (``Containers.CloudVMs.SupervisorFraction``): otherwise runners
waiting on their steps could hold every slot and no step would ever start."""
from __future__ import annotations

import pytest

from e2e_util import container, create_request, request_body, wait_container_state, wait_final
from toil_arvados.localcluster.dispatcher import max_supervisors


@pytest.mark.parametrize("cores, fraction, expected", [(2, 0.5, 1), (8, 0.5, 4), (1, 0.5, 1), (3, 0.5, 1),
                                                       (4, 0.0, 0)])
def test_max_supervisors_follows_dispatch_cloud(cores: int, fraction: float, expected: int) -> None:
    assert max_supervisors(cores, fraction) == expected


def test_a_second_runner_waits_while_a_step_takes_the_free_core(api, clean_project: str, test_image: str) -> None:
    def runner(name: str) -> dict:
        return create_request(api, request_body(["sleep", "120"], test_image, owner_uuid=clean_project, name=name,
                                                scheduling_parameters={"supervisor": True}, use_existing=False))

    first = runner("runner 1")
    wait_container_state(api, first["container_uuid"], "Running", timeout=60)
    second = runner("runner 2")
    step = create_request(api, request_body(["true"], test_image, owner_uuid=clean_project, name="step",
                                            use_existing=False))
    step = wait_final(api, step["uuid"])  # the session cluster has 2 cores: the step got the second
    assert container(api, step["container_uuid"])["exit_code"] == 0
    assert container(api, second["container_uuid"])["state"] == "Queued"
    api.container_requests().update(uuid=first["uuid"], body={"container_request": {"priority": 0}}).execute()
    wait_container_state(api, second["container_uuid"], "Running", timeout=60)  # its turn once the first ended
