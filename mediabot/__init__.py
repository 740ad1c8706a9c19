"""Code shared by every mediabot process: the generated gRPC contract (`mediabot.v1`) and log setup."""
