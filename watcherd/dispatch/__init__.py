"""Run targets: command, http, azureml (behind `watcherd.engine.ports.Dispatcher`)."""
