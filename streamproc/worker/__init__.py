"""What runs in a worker process: reading, running handlers, settling, retention, dead letters, and the
supervisor that keeps N such processes alive."""
