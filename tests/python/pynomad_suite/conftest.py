"""The fixtures python-nomad's suite expects (its repository's tests/conftest.py is not in the
PyPI sdist): a client of the agent under test, with and without a namespace."""
import nomad
import pytest
import tests.common as common


@pytest.fixture
def nomad_setup():
    return nomad.Nomad(host=common.IP, port=common.NOMAD_PORT, verify=False, token=common.NOMAD_TOKEN)


@pytest.fixture
def nomad_setup_with_namespace():
    return nomad.Nomad(
        host=common.IP,
        port=common.NOMAD_PORT,
        verify=False,
        token=common.NOMAD_TOKEN,
        namespace=common.NOMAD_NAMESPACE,
    )
