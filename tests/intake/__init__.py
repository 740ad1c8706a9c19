"""The durable intake: JetStream mechanics against a real nats-server."""
