"""``python -m vision_service``: the vision gRPC server configured from the environment, until SIGTERM."""

import sys

from mediabot.grpc_server import serve
from vision_service.config import Settings
from vision_service.server import create_server

if __name__ == "__main__":
    sys.exit(serve("vision", Settings.from_env, create_server))
