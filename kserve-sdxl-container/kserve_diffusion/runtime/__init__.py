"""The generation core: the service every protocol calls, its accelerator worker, request control, metrics."""
