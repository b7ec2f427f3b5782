"""Shared test fixtures: the tiny sinusoid config and its pieces."""

from configs import sinusoid as sinusoid_config
from maml_dist import algorithms, tasks


def tiny_config(**overrides):
    config = sinusoid_config.get_config("tiny")
    config.update(overrides)
    return config


def pieces(config):
    """(family, model, loss_fn, sample_fn) of a config."""
    family = tasks.make_task_family(config)
    model = family.make_model()
    loss_fn = algorithms.make_loss_fn(model, family.loss)

    def sample_fn(key):
        return family.sample(key, config.shots, config.num_query)

    return family, model, loss_fn, sample_fn
