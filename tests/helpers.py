"""Shared test fixtures: the tiny sinusoid config."""

from configs import sinusoid as sinusoid_config


def tiny_config(**overrides):
    config = sinusoid_config.get_config("tiny")
    config.update(overrides)
    return config
