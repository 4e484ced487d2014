"""Where python-nomad's suite finds the agent (its repository's tests/common.py is not in the
PyPI sdist). The ACL bootstrap test stores the management token in NOMAD_TOKEN."""
import os

IP = os.environ["NOMAD_IP"]
NOMAD_PORT = os.environ["NOMAD_PORT"]
NOMAD_TOKEN = os.environ.get("NOMAD_TOKEN", None)
NOMAD_NAMESPACE = "admin"
