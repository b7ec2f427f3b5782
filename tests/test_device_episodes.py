"""Episodes drawn on the device: what they contain, and that they follow the host's rules."""

import json

import jax
import numpy as np
import pytest

from maml_dist import checks, resume_checks
from maml_dist.data.device_episodes import DeviceEpisodes
from maml_dist.data.episodes import EpisodeSampler
from maml_dist.errors import UserInputError
from maml_dist.types import TRAIN_STREAM, stream_key, task_key

SIDE = 6


class _Images:
    """Images that name themselves: every pixel holds the image's number, but a corner
    marker (255) whose place after np.rot90 tells the turn."""

    def __init__(self, num_classes, per_class, extra=()):
        sizes = [per_class] * num_classes
        for c, more in extra:
            sizes[c] += more
        self.labels = np.repeat(np.arange(num_classes), sizes)
        n = len(self.labels)
        self.images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, SIDE, SIDE))
        self.images = self.images.copy()
        self.images[:, 0, 0] = 255


def _identify(image):
    """(image number, turns) of an (H, W, 1) image drawn from `_Images`."""
    image = np.asarray(image)[..., 0]
    number = int(image[SIDE // 2, SIDE // 2])
    original = np.full((SIDE, SIDE), number, np.uint8)
    original[0, 0] = 255
    turns = [k for k in range(4) if np.array_equal(np.rot90(original, k), image)]
    assert len(turns) == 1, image
    return number, turns[0]


def _episodes(episodes, tables, n):
    root = stream_key(0, TRAIN_STREAM)
    keys = jax.vmap(lambda i: task_key(root, 0, i))(np.arange(n))
    return jax.device_get(jax.jit(jax.vmap(episodes.sample, (0, None)))(keys, tables))


@pytest.mark.parametrize("rotations", [False, True])
def test_episodes_hold_distinct_classes_and_images_of_the_part(rotations):
    # Class 3 has more images than the others: the padding of the shorter rows must
    # never be drawn.
    data = _Images(num_classes=9, per_class=5, extra=[(3, 4)])
    part = np.array([1, 3, 4, 6, 8])
    ways, shots, queries = 3, 2, 3

    def sampler():
        return EpisodeSampler(data, part, ways, shots, queries, rotations)

    episodes = DeviceEpisodes(ways, shots, queries, 4 if rotations else 1, sampler)
    batch = _episodes(episodes, episodes.tables, 300)
    host = sampler().episode(0, TRAIN_STREAM, 0, 0)
    for field in ("support_x", "support_y", "query_x", "query_y"):
        assert getattr(batch, field).shape[1:] == getattr(host, field).shape
        assert getattr(batch, field).dtype == getattr(host, field).dtype
    seen_classes, seen_images = set(), set()
    for t in range(300):
        np.testing.assert_array_equal(batch.support_y[t], np.repeat(np.arange(ways), shots))
        np.testing.assert_array_equal(batch.query_y[t], np.repeat(np.arange(ways), queries))
        drawn = []
        for label in range(ways):
            images = np.concatenate(
                [
                    batch.support_x[t][batch.support_y[t] == label],
                    batch.query_x[t][batch.query_y[t] == label],
                ]
            )
            found = [_identify(x) for x in images]
            numbers = [n for n, _ in found]
            bases = {int(data.labels[n]) for n in numbers}
            turns = {k for _, k in found}
            # One class (base class and turn) per label, distinct images within it.
            assert len(bases) == 1 and len(turns) == 1
            assert len(set(numbers)) == shots + queries
            base = bases.pop()
            assert base in part
            drawn.append((base, turns.pop()))
            seen_images.update(numbers)
        assert len(set(drawn)) == ways
        seen_classes.update(drawn)
    # Over 300 episodes every class of the part, in every turn, and every image shows up.
    assert seen_classes == {(c, k) for c in part for k in range(4 if rotations else 1)}
    assert seen_images == set(np.flatnonzero(np.isin(data.labels, part)).tolist())


def test_tables_hold_only_the_parts_images_and_check_like_the_host_sampler():
    data = _Images(num_classes=6, per_class=4)
    episodes = DeviceEpisodes(
        2, 1, 1, 1, lambda: EpisodeSampler(data, np.array([0, 5]), 2, 1, 1, False)
    )
    assert episodes.tables.images.shape == (8, SIDE, SIDE, 1)
    assert episodes.tables.nbytes == 8 * SIDE * SIDE + 2 * 4 * 4 + 2 * 4
    too_many = DeviceEpisodes(
        2, 3, 2, 1, lambda: EpisodeSampler(data, np.array([0, 5]), 2, 3, 2, False)
    )
    with pytest.raises(UserInputError, match="shots \\+ queries = 5 images per class"):
        too_many.tables  # noqa: B018 (the property reads and checks the data)


class _Device:
    device_kind = "Fake GPU"

    def memory_stats(self):
        return {"bytes_limit": 2**30}


def test_tables_larger_than_half_a_device_are_refused():
    checks.check_fits_devices(2**29, [_Device()])
    with pytest.raises(UserInputError, match=r"pass --config\.data_placement=host"):
        checks.check_fits_devices(2**29 + 1, [_Device()])
    checks.check_fits_devices(2**40, jax.devices()[:1])  # XLA:CPU has no memory limit


def test_a_run_resumes_only_with_the_placement_it_started_with():
    from configs import omniglot

    config = omniglot.get_config("tiny")
    saved = json.loads(config.to_json())
    resume_checks.check_resume_compatible(saved, config)
    config.data_placement = "device"
    with pytest.raises(UserInputError, match="data_placement='host' there, 'device' now"):
        resume_checks.check_resume_compatible(saved, config)
    # Runs saved before the field existed drew on the host.
    del saved["data_placement"]
    with pytest.raises(UserInputError, match="data_placement"):
        resume_checks.check_resume_compatible(saved, config)
    config.data_placement = "host"
    resume_checks.check_resume_compatible(saved, config)


def test_an_unknown_placement_is_one_line():
    from configs import omniglot

    config = omniglot.get_config("tiny")
    config.data_placement = "gpu"
    with pytest.raises(UserInputError, match=r"config\.data_placement must be 'host' or 'device'"):
        checks.validate_config(config)
