"""``python -m audio_service``: run the audio gRPC server configured from the environment."""

from audio_service.server import serve

serve()
