"""The vision gRPC service: a photo in, whether it shows a human face (SSD300 on Triton) out."""
