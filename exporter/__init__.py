"""Exporter for Ollama model state and NVIDIA GPU metrics."""
