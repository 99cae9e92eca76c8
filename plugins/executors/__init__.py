"""Bundled executors: how cells reach processes, GPUs and machines (serial, local, ray)."""
