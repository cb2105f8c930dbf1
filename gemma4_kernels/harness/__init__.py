"""Tiny Gemma 4 models for running SGLang's real code on CPU (tests and the demo)."""
