"""State stores behind `watcherd.engine.ports.RunStore`."""
