"""``python -m audio_service``: the audio gRPC server configured from the environment, until SIGTERM."""

import sys

from audio_service.config import Settings
from audio_service.server import create_server
from mediabot.grpc_server import serve

if __name__ == "__main__":
    sys.exit(serve("audio", Settings.from_env, create_server))
