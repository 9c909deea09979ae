"""Event-driven triggers for the lifecycle."""
