"""The audio gRPC service: any voice note in, one canonical 16 kHz mono signed 16-bit WAV out."""
